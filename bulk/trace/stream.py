"""Open a byte stream for a trace: a file, stdin (``-``), gzip or zstd, streamed.

Compression is detected by magic number, never by file name, and decoded on the
fly: nothing is written to a temporary file.
"""

from __future__ import annotations

import gzip
import io
import sys
import zlib
from typing import BinaryIO

import zstandard

from bulk.errors import TraceError, TruncatedTrace

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# A zstd skippable frame (0x184D2A50..5F) may come first, e.g. a seek table.
SKIPPABLE_LOW = 0x184D2A50
READ_SIZE = 1 << 20


def _is_zstd_start(head: bytes) -> bool:
    if head[:4] == ZSTD_MAGIC:
        return True
    if len(head) >= 4:
        magic = int.from_bytes(head[:4], "little")
        return SKIPPABLE_LOW <= magic <= SKIPPABLE_LOW + 0xF
    return False


class _Decoded(io.RawIOBase):
    """Wrap a decompressor so that its errors become TraceError lines."""

    def __init__(self, inner: BinaryIO, path: str, kind: str) -> None:
        self._inner = inner
        self._path = path
        self._kind = kind
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(buffer))
        except EOFError as exc:
            raise TruncatedTrace(
                self._path, None, f"{self._kind} stream ends early after {self._pos} bytes"
            ) from exc
        except (OSError, zlib.error, zstandard.ZstdError) as exc:
            raise TraceError(
                self._path, None, f"corrupt {self._kind} data after {self._pos} bytes: {exc}"
            ) from exc
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


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
            except FileNotFoundError:
                raise TraceError(path, None, "no such file") from None
            except IsADirectoryError:
                raise TraceError(path, None, "is a directory, not a trace") from None
            except PermissionError:
                raise TraceError(path, None, "permission denied") from None
            except OSError as exc:
                raise TraceError(path, None, exc.strerror or str(exc)) from None
            self._owns = True
        self._raw = raw
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[type-var]
        head = buffered.peek(4)[:4]
        self.compression: str | None = None
        self.file: BinaryIO
        if head[:2] == GZIP_MAGIC:
            self.compression = "gzip"
            inner: BinaryIO = gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[assignment]
            self.file = io.BufferedReader(_Decoded(inner, path, "gzip"), READ_SIZE)
        elif _is_zstd_start(head):
            self.compression = "zstd"
            dctx = zstandard.ZstdDecompressor()
            reader = dctx.stream_reader(buffered, read_size=READ_SIZE, read_across_frames=True)
            self.file = io.BufferedReader(_Decoded(reader, path, "zstd"), READ_SIZE)
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
