"""Open a byte stream for a trace: a file, stdin (``-``), gzip or zstd, streamed.

Compression is detected by magic number, never by file name, and decoded on the
fly: nothing is written to a temporary file.
"""

from __future__ import annotations

import io
import sys
import zlib
from typing import Any, BinaryIO

from bulk.errors import TraceError, TruncatedTrace
from bulk.trace.magic import HEAD_LEN, compression_of, sniff_compression

__all__ = ["READ_SIZE", "TraceStream", "open_error", "sniff_compression"]

READ_SIZE = 1 << 20


def open_error(path: str, exc: OSError) -> TraceError:
    """The one-line TraceError for a trace that cannot be opened."""
    if isinstance(exc, FileNotFoundError):
        return TraceError(path, None, "no such file")
    if isinstance(exc, IsADirectoryError):
        return TraceError(path, None, "is a directory, not a trace")
    if isinstance(exc, PermissionError):
        return TraceError(path, None, "permission denied")
    return TraceError(path, None, exc.strerror or str(exc))


class _Decoded:
    """A decompressing reader with plain ``read(n)`` semantics.

    ``read(n)`` returns ``n`` bytes, or fewer only at the end. When the
    compressed input is cut or corrupt, the bytes decoded before the damage are
    returned first and the error (a TraceError line) is raised on the next
    call, so readers deliver every whole packet before reporting.
    """

    def __init__(
        self, inner: Any, path: str, kind: str, errors: tuple[type[Exception], ...]
    ) -> None:
        self._inner = inner
        self._path = path
        self._kind = kind
        self._errors = errors  # what the decoder raises for corrupt data
        self._pos = 0
        self._error: TraceError | None = None

    def read(self, n: int = -1) -> bytes:
        if self._error is not None:
            raise self._error
        parts: list[bytes] = []
        got = 0
        while n < 0 or got < n:
            try:
                chunk = self._inner.read1(READ_SIZE if n < 0 else n - got)
            except EOFError:
                self._error = TruncatedTrace(
                    self._path,
                    None,
                    f"{self._kind} stream ends early after {self._pos + got} decompressed bytes",
                )
                break
            except self._errors as exc:
                self._error = TraceError(
                    self._path,
                    None,
                    f"corrupt {self._kind} data after {self._pos + got} decompressed bytes: {exc}",
                )
                break
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        self._pos += got
        if not parts and self._error is not None:
            raise self._error
        return b"".join(parts)

    def close(self) -> None:
        self._inner.close()


class TraceStream:
    """A readable binary stream with the compression that was detected."""

    def __init__(self, path: str) -> None:
        self.path = path
        raw: BinaryIO
        if path == "-":
            raw = sys.stdin.buffer
            self._owns = False
        else:
            try:
                raw = open(path, "rb")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise open_error(path, exc) from None
            self._owns = True
        self._raw = raw
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[type-var]
        self.compression = compression_of(buffered.peek(HEAD_LEN)[:HEAD_LEN])
        self.file: BinaryIO
        if self.compression == "gzip":
            import gzip  # noqa: PLC0415 - ~1 ms, and most traces are not gzip

            inner: BinaryIO = gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[assignment]
            self.file = _Decoded(inner, path, "gzip", (OSError, zlib.error))  # type: ignore[assignment]
        elif self.compression == "zstd":
            import zstandard  # noqa: PLC0415 - ~3 ms, and most traces are not zstd

            dctx = zstandard.ZstdDecompressor()
            reader = dctx.stream_reader(buffered, read_size=READ_SIZE, read_across_frames=True)
            errors = (OSError, zstandard.ZstdError)
            self.file = _Decoded(reader, path, "zstd", errors)  # type: ignore[assignment]
        else:
            self.file = buffered
        self._buffered = buffered

    def close(self) -> None:
        try:
            if self.file is not self._buffered:
                self.file.close()
        finally:
            if self._owns:
                self._raw.close()

    def __enter__(self) -> TraceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
