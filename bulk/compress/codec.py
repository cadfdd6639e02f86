"""Compress one uncompressed trace into a seekable file, and verify the result."""

from __future__ import annotations

import ctypes
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO

from bulk.errors import ArchiveError, TraceError
from bulk.trace.framing import DEFAULT_FRAME_SIZE, Layout, count_packets, split_frames
from bulk.trace.seekable import (
    FrameIndex,
    FrameMismatch,
    SeekableTrace,
    SeekableWriter,
    Workers,
    native_same_bytes,
)
from bulk.trace.zstdframe import FrameDecompressor

FORMATS = {"zstd": ".zst", "gzip": ".gz"}


@dataclass(frozen=True)
class CompressSettings:
    fmt: str = "zstd"
    level: int = 3
    frame_size: int = DEFAULT_FRAME_SIZE
    threads: int = 2


@dataclass(frozen=True)
class Compressed:
    """What compressing one trace produced (the index) and the original's figures."""

    index: FrameIndex
    size: int  # original bytes
    packets: int  # whole packets in the original
    comp_size: int
    damage: str | None


def compress_stream(
    src: BinaryIO,
    out: BinaryIO,
    settings: CompressSettings,
    path: str = "",
    verify_frames: bool = False,
    *,
    workers: Workers | None = None,
) -> Compressed:
    """Read an uncompressed trace from ``src`` and write the seekable file to ``out``.

    With ``verify_frames``, every frame is read back from ``out`` as soon as it is
    written and must decompress to exactly the original bytes (see
    :class:`~bulk.trace.seekable.SeekableWriter`); a difference raises
    ArchiveError. The reading of ``src``, the compression of the next frames and
    the check of the last ones overlap, so verifying costs one decompression per
    frame and no second pass over the original. ``workers``: threads shared with
    other files written at the same time (see :class:`~bulk.trace.seekable.Workers`)."""
    tune_malloc()
    splitter = split_frames(src, settings.frame_size, path)
    writer = SeekableWriter(
        out, settings.fmt, settings.level, settings.threads, verify_frames, workers=workers
    )
    try:
        for chunk in splitter:
            writer.add(chunk.data, chunk.stats)
        index = writer.finish(splitter.layout, splitter.damage is not None)
    except FrameMismatch as exc:
        writer.abort()
        raise ArchiveError(f"{path or 'the compressed copy'}: verification failed: {exc}") from None
    except BaseException:
        writer.abort()
        raise
    return Compressed(index, splitter.size, splitter.packets, writer.written, splitter.damage)


def check_index(path: str, expected: Compressed) -> None:
    """The index read back from the file ``path`` is the one written, and it accounts
    for the whole original (its size and packet count). Raises ArchiveError."""
    try:
        with SeekableTrace.open(path) as st:
            idx = st.index
    except TraceError as exc:
        raise ArchiveError(f"verification failed: {exc}") from None
    if idx != expected.index:
        raise ArchiveError(f"{path}: the index read back differs from the one written")
    if idx.packets != expected.packets or idx.size != expected.size:
        raise ArchiveError(
            f"{path}: the index says {idx.packets} packets in {idx.size} bytes; "
            f"the original has {expected.packets} in {expected.size}"
        )


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@lru_cache(maxsize=1)
def tune_malloc() -> None:
    """Keep freed frame buffers (4-5 MiB each) in the heap for the next frame.

    glibc serves blocks that large with mmap at first and gives them back on
    free, so every frame's buffers would be fresh pages, each zeroed on its
    first touch: measured on 500 MB, 0.4-0.45 s of system CPU of 3.3 s for the
    whole command (docs/BENCHMARKS.md, "bulk compress"). The same settings as
    ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``; nothing else changes
    (the memory held is the frames in flight). No-op outside glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)


def compress_file(
    src_path: str, out: BinaryIO, settings: CompressSettings, verify_frames: bool = False
) -> Compressed:
    with open(src_path, "rb") as src:
        return compress_stream(src, out, settings, src_path, verify_frames)


def verify(
    path: str,
    original: str | BinaryIO,
    expected: Compressed | None = None,
    threads: int = 2,
    deep: bool = False,
) -> None:
    """Read the compressed trace ``path`` back and compare it with the original.

    Every frame is decompressed (the decoder checks the frame's own checksum:
    zstd's XXH64, gzip's CRC-32) and must equal, byte for byte, the original's
    bytes at the offsets the index gives, and together they must be all of the
    original. With ``expected`` (what the writer produced), the index read back
    must be the one written and its packet count the original's. With ``deep``
    (the sweep, for files whose writing it did not see), every frame is also
    walked: its whole records must be the packet count the index says.
    Raises ArchiveError on any difference.
    """
    own = isinstance(original, str)
    orig: BinaryIO = open(original, "rb") if isinstance(original, str) else original  # noqa: SIM115
    name = original if isinstance(original, str) else "the original"
    try:
        with SeekableTrace.open(path) as st:
            idx = st.index
            if expected is not None:
                if idx != expected.index:
                    raise ArchiveError(f"{path}: the index read back differs from the one written")
                if idx.packets != expected.packets or idx.size != expected.size:
                    raise ArchiveError(
                        f"{path}: the index says {idx.packets} packets in {idx.size} bytes; "
                        f"the original has {expected.packets} in {expected.size}"
                    )
            unzstd = FrameDecompressor() if st.compression == "zstd" else None
            if unzstd is not None and unzstd.available():
                try:
                    _verify_frames(st, orig, name, unzstd, threads=threads, deep=deep)
                finally:
                    unzstd.close()
            else:
                for k, data in enumerate(st.iter_frames(threads=threads)):
                    if orig.read(len(data)) != data:
                        raise ArchiveError(_differs(st, k, name))
                    if deep:
                        _walk_frame(st, k, data)
            if orig.read(1):
                raise ArchiveError(f"{name} is longer than the {idx.size} bytes of {path}")
    except TraceError as exc:
        raise ArchiveError(f"verification failed: {exc}") from None
    finally:
        if own:
            orig.close()


def _differs(st: SeekableTrace, k: int, name: str) -> str:
    fr = st.index.frames[k]
    return (
        f"{st.path}: frame {k} differs from bytes {fr.decomp_offset}.."
        f"{fr.decomp_offset + fr.decomp_size} of {name}"
    )


def _verify_frames(
    st: SeekableTrace,
    orig: BinaryIO,
    name: str,
    unzstd: FrameDecompressor,
    *,
    threads: int,
    deep: bool,
) -> None:
    """:func:`verify`'s frame loop for zstd with the system libzstd: each frame is
    decompressed into a reused buffer (its checksum checked), compared with the
    original's bytes and, with ``deep``, walked there, by ``threads`` workers
    while the next frames are read."""
    same = native_same_bytes()

    def check(k: int, comp: bytes, original: bytes) -> None:
        def compare(plain: memoryview, original: bytes | bytearray) -> bool:
            if not same(plain, original):
                return False
            if deep:
                _walk_frame(st, k, plain)
            return True

        try:
            equal = unzstd.equal(comp, original, compare)
        except ValueError as exc:
            raise ArchiveError(
                f"verification failed: {st.path}: frame {k} corrupt: {exc}"
            ) from None
        if not equal:
            raise ArchiveError(_differs(st, k, name))

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="bulk-verify") as pool:
        ahead: deque[Future[None]] = deque()
        try:
            for k, fr in enumerate(st.index.frames):
                # The original's bytes first: a frame is never decompressed into more
                # than they are (the index of a damaged file could say anything).
                original = orig.read(fr.decomp_size)
                if len(original) != fr.decomp_size:
                    raise ArchiveError(_differs(st, k, name))
                ahead.append(pool.submit(check, k, st.read_compressed(k), original))
                while len(ahead) > 2 * threads:
                    ahead.popleft().result()
            while ahead:
                ahead.popleft().result()
        finally:
            for fut in ahead:
                fut.cancel()


def _walk_frame(st: SeekableTrace, k: int, data: bytes | memoryview) -> None:
    idx = st.index
    layout: Layout = idx.layout
    fr = idx.frames[k]
    last_with_packets = max((i for i, f in enumerate(idx.frames) if f.packets), default=-1)
    if idx.damaged and k > last_with_packets:
        return  # the unwalkable tail, kept byte for byte
    n, stop = count_packets(layout, data, layout.header_len if k == 0 else 0)
    whole = stop == len(data) or (idx.damaged and k == last_with_packets)
    if n != fr.packets or not whole:
        raise ArchiveError(
            f"{st.path}: frame {k} walks to {n} packets ending at byte {stop} of "
            f"{len(data)}; the index says {fr.packets}"
        )


def compressed_name(path: str, fmt: str) -> str:
    return path + FORMATS[fmt]


def fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
