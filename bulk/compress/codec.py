"""Compress one uncompressed trace into a seekable file, and verify the result."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from bulk.errors import ArchiveError, TraceError
from bulk.trace.framing import DEFAULT_FRAME_SIZE, Layout, count_packets, split_frames
from bulk.trace.seekable import FrameIndex, SeekableTrace, SeekableWriter

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
    crc32: int  # of the original bytes
    packets: int  # whole packets in the original
    comp_size: int
    damage: str | None


def compress_stream(
    src: BinaryIO, out: BinaryIO, settings: CompressSettings, path: str = ""
) -> Compressed:
    """Read an uncompressed trace from ``src`` and write the seekable file to ``out``."""
    splitter = split_frames(src, settings.frame_size, path)
    writer = SeekableWriter(out, settings.fmt, settings.level, settings.threads)
    crc = 0
    try:
        for chunk in splitter:
            crc = zlib.crc32(chunk.data, crc)
            writer.add(chunk.data, chunk.stats)
    except BaseException:
        writer.abort()
        raise
    index = writer.finish(splitter.layout, crc, splitter.damage is not None)
    return Compressed(index, splitter.size, crc, splitter.packets, writer.written, splitter.damage)


def compress_file(src_path: str, out: BinaryIO, settings: CompressSettings) -> Compressed:
    with open(src_path, "rb") as src:
        return compress_stream(src, out, settings, src_path)


def verify(path: str, expected: Compressed, threads: int = 2) -> None:
    """Read ``path`` back through its index and compare it with the original.

    Checks that the index on disk is the one written, that every frame
    decompresses (zstd and gzip check their own checksums) to the size the index
    says and walks as whole records to the packet count the index says, and
    that the decompressed bytes have the original's length and CRC-32 and the
    packets add up to the original's count. Raises ArchiveError on a mismatch.
    """
    try:
        with SeekableTrace.open(path) as st:
            idx = st.index
            if idx != expected.index:
                raise ArchiveError(f"{path}: the index read back differs from the one written")
            layout: Layout = idx.layout
            last_with_packets = max(
                (k for k, fr in enumerate(idx.frames) if fr.packets), default=-1
            )
            crc = 0
            size = 0
            packets = 0
            for k, data in enumerate(st.iter_frames(threads=threads)):
                crc = zlib.crc32(data, crc)
                size += len(data)
                fr = idx.frames[k]
                if idx.damaged and k > last_with_packets:
                    continue  # the unwalkable tail, kept byte for byte
                n, stop = count_packets(layout, data, layout.header_len if k == 0 else 0)
                packets += n
                whole = stop == len(data) or (idx.damaged and k == last_with_packets)
                if n != fr.packets or not whole:
                    raise ArchiveError(
                        f"{path}: frame {k} walks to {n} packets ending at byte {stop} of "
                        f"{len(data)}; the index says {fr.packets}"
                    )
    except TraceError as exc:
        raise ArchiveError(f"verification failed: {exc}") from None
    if size != expected.size or crc != expected.crc32 or packets != expected.packets:
        raise ArchiveError(
            f"{path}: decompressed {size} bytes, {packets} packets, crc32 {crc:08x}; "
            f"the original has {expected.size} bytes, {expected.packets} packets, "
            f"crc32 {expected.crc32:08x}"
        )


def original_figures(path: str) -> tuple[int, int, int]:
    """(size, crc32, packets) of an uncompressed trace, for re-verification after a crash."""
    crc = 0
    with open(path, "rb") as f:
        splitter = split_frames(f, DEFAULT_FRAME_SIZE, path)
        for chunk in splitter:
            crc = zlib.crc32(chunk.data, crc)
    return splitter.size, crc, splitter.packets


def compressed_name(path: str, fmt: str) -> str:
    return path + FORMATS[fmt]


def fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
