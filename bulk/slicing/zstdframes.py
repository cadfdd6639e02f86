"""Random access inside a zstd-compressed trace made of independent frames.

A zstd file is a sequence of frames, each decodable on its own. When a trace
is compressed in many frames (``bulk compress`` writes one every few MiB), the
frame table maps decompressed offsets to compressed ones, so a slice needs to
decompress only the frames it touches. The table comes from:

1. the zstd *seekable format* seek table (a skippable frame at the end,
   magic 0x8F92EAB1 in its footer), when present; else
2. walking the frame and block headers (a few bytes per 128 KiB block, no
   decompression), which needs each frame to record its content size, as
   every one-shot and ``zstd`` command-line frame does.

A file compressed as a single frame (``zstd -T0`` on a whole trace) has a table
of one frame: it is not seekable and is read as a stream.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass

import zstandard

from bulk.errors import TraceError
from bulk.trace.magic import ZSTD_FRAME_MAGIC, is_skippable

SEEKABLE_MAGIC = 0x8F92EAB1
SEEK_TABLE_SKIPPABLE = 0x184D2A5E
# Decoded frames kept in memory (two cover a read across one boundary).
CACHE_FRAMES = 3
# Frames larger than this are not worth seeking into (and could exhaust memory).
MAX_FRAME_CONTENT = 256 << 20


@dataclass(frozen=True)
class Frame:
    comp_offset: int
    comp_size: int
    data_offset: int
    data_size: int


def _frame_header(head: bytes, path: str, offset: int) -> tuple[int, int | None]:
    """(header length, content size or None) of the zstd frame starting ``head``."""
    if len(head) < 6:
        raise TraceError(path, offset, "truncated zstd frame header")
    fhd = head[4]
    fcs_flag = fhd >> 6
    single = (fhd >> 5) & 1
    dict_flag = fhd & 3
    pos = 5 + (0 if single else 1)
    pos += (0, 1, 2, 4)[dict_flag]
    fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if len(head) < pos + fcs_len:
        raise TraceError(path, offset, "truncated zstd frame header")
    if fcs_len == 0:
        return pos, None
    value = int.from_bytes(head[pos : pos + fcs_len], "little")
    if fcs_len == 2:
        value += 256
    return pos + fcs_len, value


def _walk_frames(fd: int, size: int, path: str) -> tuple[list[Frame], int] | None:
    """Walk frame and block headers. None if a frame does not state its size."""
    frames: list[Frame] = []
    pos = 0
    data = 0
    reads = 0
    while pos < size:
        head = os.pread(fd, 18, pos)
        reads += len(head)
        if len(head) < 8:
            raise TraceError(path, pos, "truncated zstd frame")
        (magic,) = struct.unpack_from("<I", head)
        if is_skippable(magic):
            (skip,) = struct.unpack_from("<I", head, 4)
            pos += 8 + skip
            continue
        if magic != ZSTD_FRAME_MAGIC:
            raise TraceError(path, pos, "not a zstd frame")
        hlen, content = _frame_header(head, path, pos)
        if content is None:
            return None
        checksum = (head[4] >> 2) & 1
        bpos = pos + hlen
        while True:
            bh = os.pread(fd, 3, bpos)
            reads += len(bh)
            if len(bh) < 3:
                raise TraceError(path, bpos, "truncated zstd block")
            value = int.from_bytes(bh, "little")
            last, btype, bsize = value & 1, (value >> 1) & 3, value >> 3
            if btype == 3:
                raise TraceError(path, bpos, "corrupt zstd block type")
            bpos += 3 + (1 if btype == 1 else bsize)
            if last:
                break
        end = bpos + 4 * checksum
        frames.append(Frame(pos, end - pos, data, content))
        data += content
        pos = end
    return frames, reads


def _seek_table(fd: int, size: int) -> tuple[list[Frame], int] | None:
    """The frames of a zstd seekable-format file, from its seek table."""
    if size < 17:
        return None
    foot = os.pread(fd, 9, size - 9)
    nframes, desc, magic = struct.unpack("<IBI", foot)
    if magic != SEEKABLE_MAGIC:
        return None
    entry = 12 if desc & 0x80 else 8
    table_len = nframes * entry + 9
    start = size - table_len - 8
    if start < 0:
        return None
    raw = os.pread(fd, table_len + 8, start)
    smagic, flen = struct.unpack_from("<II", raw)
    if smagic != SEEK_TABLE_SKIPPABLE or flen != table_len:
        return None
    frames: list[Frame] = []
    comp = data = 0
    for i in range(nframes):
        csize, dsize = struct.unpack_from("<II", raw, 8 + i * entry)
        frames.append(Frame(comp, csize, data, dsize))
        comp += csize
        data += dsize
    return frames, len(raw) + 9


class ZstdFrames:
    """The decompressed bytes of a multi-frame zstd file, readable at any offset.

    Implements :class:`bulk.slicing.pcapfile.ByteSource`; ``bytes_read``
    counts compressed bytes read from disk.
    """

    def __init__(self, path: str, frames: list[Frame], fd: int, table_bytes: int) -> None:
        self.path = path
        self.frames = frames
        self.fd = fd
        self.size = frames[-1].data_offset + frames[-1].data_size if frames else 0
        self.bytes_read = table_bytes
        self.granule = max((f.data_size for f in frames), default=0)
        self._starts = [f.data_offset for f in frames]
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._dctx = zstandard.ZstdDecompressor()

    @classmethod
    def open(cls, path: str) -> ZstdFrames | None:
        """The frame table of ``path``, or None if it cannot be seeked into."""
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            found = _seek_table(fd, size) or _walk_frames(fd, size, path)
            if found is None:
                os.close(fd)
                return None
            frames, table_bytes = found
            frames = [f for f in frames if f.data_size > 0]
            if len(frames) < 2 or max(f.data_size for f in frames) > MAX_FRAME_CONTENT:
                os.close(fd)
                return None
            return cls(path, frames, fd, table_bytes)
        except BaseException:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise

    def _frame(self, index: int) -> bytes:
        data = self._cache.get(index)
        if data is not None:
            self._cache.move_to_end(index)
            return data
        f = self.frames[index]
        comp = os.pread(self.fd, f.comp_size, f.comp_offset)
        self.bytes_read += len(comp)
        try:
            # max_output_size is ignored when the frame header declares a size:
            # a corrupt header must not make us allocate what it claims.
            declared = zstandard.frame_content_size(comp)
            if declared not in (f.data_size, -1):
                raise zstandard.ZstdError(f"header declares {declared} bytes")
            data = self._dctx.decompress(comp, max_output_size=f.data_size)
        except zstandard.ZstdError as exc:
            raise TraceError(self.path, f.comp_offset, f"corrupt zstd frame: {exc}") from None
        if len(data) != f.data_size:
            raise TraceError(
                self.path,
                f.comp_offset,
                f"zstd frame holds {len(data)} bytes, its header says {f.data_size}",
            )
        self._cache[index] = data
        while len(self._cache) > CACHE_FRAMES:
            self._cache.popitem(last=False)
        return data

    def read(self, offset: int, n: int) -> bytes:
        out: list[bytes] = []
        end = min(self.size, offset + n)
        pos = offset
        while pos < end:
            i = bisect.bisect_right(self._starts, pos) - 1
            f = self.frames[i]
            data = self._frame(i)
            piece = data[pos - f.data_offset : end - f.data_offset]
            out.append(piece)
            pos += len(piece)
        return b"".join(out)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
