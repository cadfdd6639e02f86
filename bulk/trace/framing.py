"""Cut an uncompressed trace into frames on record boundaries, with per-frame stats.

:func:`split_frames` reads a pcap or pcapng byte stream and yields chunks of
about ``frame_size`` bytes that each end on a record boundary (a pcap record, a
pcapng block), with the packet count and first/last/min/max timestamps of the
packets inside. The first chunk starts with the file header (the 24-byte pcap
header, or the pcapng blocks before the first packet); any later chunk, put
behind that header, is a valid trace on its own. Concatenated, the chunks are
the input byte for byte, including a damaged or truncated tail, which goes into
the last chunk(s) and is reported in :attr:`FrameSplitter.damage`.

:func:`count_packets` re-walks one decompressed frame (verification).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from bulk.errors import TraceError
from bulk.trace.reader import (
    MAX_BLOCK,
    MAX_SNAPLEN,
    PCAP_MAGIC_NS,
    PCAP_MAGIC_US,
    PCAPNG_BYTE_ORDER,
    PCAPNG_SHB,
    TraceReader,
    _ticks_to_ns,
)

DEFAULT_FRAME_SIZE = 4 << 20
_PACKET_BLOCKS = (6, 2, 3)  # enhanced, obsolete, simple packet blocks


class FrameStats(NamedTuple):
    """What one frame holds: whole packets and their timestamps (None if no packet)."""

    packets: int
    first_ts: int | None
    last_ts: int | None
    min_ts: int | None
    max_ts: int | None


class Chunk(NamedTuple):
    data: bytes
    stats: FrameStats


@dataclass(frozen=True)
class Layout:
    """The container of a trace, as needed to walk its records.

    ``header_len``: bytes before the first record (pcap: 24; pcapng: the blocks
    before the first packet block). ``endian``: ``<`` or ``>``. ``snaplen`` is
    pcap's (0 for pcapng).
    """

    kind: str
    header_len: int
    endian: str
    nanosecond: bool = False
    snaplen: int = 0


_EMPTY = FrameStats(0, None, None, None, None)


def _stats(packets: int, first: int, last: int, lo: int, hi: int) -> FrameStats:
    if packets == 0:
        return _EMPTY
    return FrameStats(packets, first, last, lo, hi)


class FrameSplitter:
    """Iterate for :class:`Chunk` records. After iteration: ``packets`` (total
    whole packets), ``size`` (bytes), ``damage`` (None, or why the tail after
    the last whole record could not be walked)."""

    def __init__(self, f: BinaryIO, frame_size: int = DEFAULT_FRAME_SIZE, path: str = "") -> None:
        if frame_size < 1:
            raise ValueError("frame_size must be positive")
        self._f = f
        self.frame_size = frame_size
        self.path = path
        self.packets = 0
        self.size = 0
        self.damage: str | None = None
        head = _read_exact(f, 24)
        self._head = head
        if len(head) < 4:
            raise TraceError(path, 0, f"too short for a trace ({len(head)} bytes)")
        le = int.from_bytes(head[:4], "little")
        be = int.from_bytes(head[:4], "big")
        if le == PCAPNG_SHB:
            if len(head) < 12:
                raise TraceError(path, 0, "pcapng section header cut short")
            bom = head[8:12]
            if int.from_bytes(bom, "little") == PCAPNG_BYTE_ORDER:
                endian = "<"
            elif int.from_bytes(bom, "big") == PCAPNG_BYTE_ORDER:
                endian = ">"
            else:
                raise TraceError(path, 8, "bad pcapng byte-order magic")
            # header_len is found while walking; Layout is completed then.
            self.layout = Layout("pcapng", 0, endian)
        elif le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            if len(head) < 24:
                raise TraceError(path, 0, f"pcap file header cut short ({len(head)} of 24 bytes)")
            endian = "<" if le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
            (snaplen,) = struct.unpack_from(endian + "I", head, 16)
            self.layout = Layout("pcap", 24, endian, PCAP_MAGIC_NS in (le, be), snaplen)
        else:
            raise TraceError(
                path, 0, f"not a pcap or pcapng trace (starts with {head[:4].hex(' ')})"
            )

    def __iter__(self) -> Iterator[Chunk]:
        inner = self._pcap() if self.layout.kind == "pcap" else self._pcapng()
        for chunk in inner:
            self.size += len(chunk.data)
            self.packets += chunk.stats.packets
            yield chunk

    def _tail(self, data: bytes) -> Iterator[Chunk]:
        """Everything from ``data`` on, unwalkable: cut by size, no packets."""
        while True:
            while len(data) >= self.frame_size:
                yield Chunk(data[: self.frame_size], _EMPTY)
                data = data[self.frame_size :]
            more = self._f.read(self.frame_size)
            if not more:
                break
            data += more
        if data:
            yield Chunk(data, _EMPTY)

    # -- pcap: the hot path -------------------------------------------------------

    def _pcap(self) -> Iterator[Chunk]:
        """Walk pcap records, one frame at a time.

        The buffer is filled to ``margin`` bytes past the frame's cut mark before
        the walk, so a record starting before the mark ends inside the buffer:
        the inner loop then checks nothing but the captured length (about half
        the work of a bounds-checked walk). Near the end of the file a careful
        walk, with bounds checks, finishes the frame.
        """
        lay = self.layout
        read = self._f.read
        size = self.frame_size
        unpack = struct.Struct(lay.endian + "III").unpack_from  # sec, frac, caplen
        # Times are compared as sec * per_s + frac: the time in ns divided by mult,
        # exactly (also for a damaged record's fraction >= per_s).
        per_s, mult = (1_000_000_000, 1) if lay.nanosecond else (1_000_000, 1000)
        maxcap = max(lay.snaplen, MAX_SNAPLEN)
        margin = 16 + maxcap  # a whole record that starts before a mark ends before mark + margin
        data = self._head
        eof = False
        start = 0  # frame start in data
        pos = 24  # next record in data
        while True:
            # The frame ends at the first record boundary at or after cut (and holds at
            # least one record: the first frame also holds the file header).
            cut = max(start + size, pos + 1)
            if not eof and len(data) < cut + margin:
                parts = [data[start:] if start else data]
                pos -= start
                cut -= start
                start = 0
                have = len(parts[0])
                while have < cut + margin:
                    more = read(max(1 << 20, cut + margin - have))
                    if not more:
                        eof = True
                        break
                    parts.append(more)
                    have += len(more)
                data = b"".join(parts)
            end = len(data)
            n = 0
            first = lo = hi = key = 0
            if pos + 16 <= end:
                sec, frac, caplen = unpack(data, pos)
                first = lo = hi = key = sec * per_s + frac
            safe = min(cut, end - margin)
            while pos < safe:
                sec, frac, caplen = unpack(data, pos)
                if caplen > maxcap:
                    break
                key = sec * per_s + frac
                if key < lo:
                    lo = key
                elif key > hi:
                    hi = key
                pos += 16 + caplen
                n += 1
            else:
                while pos < cut and pos + 16 <= end:
                    sec, frac, caplen = unpack(data, pos)
                    nxt = pos + 16 + caplen
                    if nxt > end or caplen > maxcap:
                        break
                    key = sec * per_s + frac
                    if key < lo:
                        lo = key
                    elif key > hi:
                        hi = key
                    pos = nxt
                    n += 1
            stats = _stats(n, first * mult, key * mult, lo * mult, hi * mult)
            if pos >= cut:
                yield Chunk(data[start:pos], stats)
                start = pos
                continue
            # The walk ends before the mark: the end of the file, or damage.
            if pos + 16 <= end:
                caplen = unpack(data, pos)[2]
                if (caplen > maxcap and pos + 16 + caplen <= end) or not eof:
                    self.damage = (
                        f"corrupt record at byte {self.size + pos - start}: "
                        f"captured length {caplen} exceeds the maximum {maxcap}"
                    )
            if pos < end and self.damage is None:
                self.damage = (
                    f"truncated: {end - pos} bytes after the last whole record "
                    f"(byte {self.size + pos - start})"
                )
            if n or pos > start:
                yield Chunk(data[start:pos], stats)
            yield from self._tail(data[pos:])
            return

    # -- pcapng: block walk ------------------------------------------------------

    def _pcapng(self) -> Iterator[Chunk]:
        read = self._f.read
        size = self.frame_size
        block = max(size, 1 << 20)
        endian = self.layout.endian
        u32 = struct.Struct(endian + "I").unpack_from
        data = self._head + read(block)
        start = 0
        pos = 0
        n = 0
        first = last = lo = hi = 0
        ifaces: list[tuple[int, int]] = []  # (ticks per second, offset seconds)
        header_len = -1
        while True:
            end = len(data)
            while pos + 12 <= end:
                btype = int.from_bytes(data[pos : pos + 4], "little" if endian == "<" else "big")
                if btype == PCAPNG_SHB:
                    bom = int.from_bytes(data[pos + 8 : pos + 12], "little")
                    if bom == PCAPNG_BYTE_ORDER:
                        endian = "<"
                    elif int.from_bytes(data[pos + 8 : pos + 12], "big") == PCAPNG_BYTE_ORDER:
                        endian = ">"
                    else:
                        self.damage = (
                            f"bad pcapng byte-order magic at byte {self.size + pos - start + 8}"
                        )
                        break
                    u32 = struct.Struct(endian + "I").unpack_from
                    ifaces = []
                (blen,) = u32(data, pos + 4)
                if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                    self.damage = (
                        f"corrupt pcapng block at byte {self.size + pos - start}: length {blen}"
                    )
                    break
                nxt = pos + blen
                if nxt > end:
                    break
                if btype == 1 and blen >= 20:
                    opts = data[pos + 16 : nxt - 4]
                    ifaces.append(TraceReader._idb_options(opts, endian))
                elif btype in _PACKET_BLOCKS:
                    if header_len < 0:
                        header_len = pos
                    ts: int | None = None
                    if btype == 6 and blen >= 32:
                        ifid, th, tl = struct.unpack_from(endian + "III", data, pos + 8)
                        if ifid < len(ifaces):
                            tps, off = ifaces[ifid]
                            ts = _ticks_to_ns((th << 32) | tl, tps, off)
                    elif btype == 2 and blen >= 32:
                        ifid, _d, th, tl = struct.unpack_from(endian + "HHII", data, pos + 8)
                        if ifid < len(ifaces):
                            tps, off = ifaces[ifid]
                            ts = _ticks_to_ns((th << 32) | tl, tps, off)
                    if ts is None:
                        ts = 0  # simple packet blocks carry no time (readers say 0)
                    if n:
                        lo = min(lo, ts)
                        hi = max(hi, ts)
                    else:
                        first = lo = hi = ts
                    last = ts
                    n += 1
                pos = nxt
                if header_len >= 0 and nxt - start >= size:
                    yield Chunk(data[start:nxt], _stats(n, first, last, lo, hi))
                    start = nxt
                    n = 0
            if self.damage is not None:
                break
            more = read(block)
            if not more:
                break
            data = data[start:] + more
            pos -= start
            start = 0
        if header_len < 0:  # no packet at all: everything walked is header
            header_len = pos
        self.layout = Layout("pcapng", header_len, self.layout.endian)
        if pos < len(data) and self.damage is None:
            self.damage = (
                f"truncated: {len(data) - pos} bytes after the last whole block "
                f"(byte {self.size + pos - start})"
            )
        if n or pos > start:
            yield Chunk(data[start:pos], _stats(n, first, last, lo, hi))
        yield from self._tail(data[pos:])


def split_frames(
    f: BinaryIO, frame_size: int = DEFAULT_FRAME_SIZE, path: str = ""
) -> FrameSplitter:
    """A :class:`FrameSplitter` over an uncompressed trace stream (reads the header now)."""
    return FrameSplitter(f, frame_size, path)


def count_packets(layout: Layout, data: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Walk whole records of ``data`` from ``pos``: (packets, offset where the walk stopped).

    A frame written on record boundaries walks to exactly ``len(data)``.
    """
    end = len(data)
    n = 0
    if layout.kind == "pcap":
        unpack = struct.Struct(layout.endian + "8xI").unpack_from
        maxcap = max(layout.snaplen, MAX_SNAPLEN)
        while pos + 16 <= end:
            (caplen,) = unpack(data, pos)
            nxt = pos + 16 + caplen
            if nxt > end or caplen > maxcap:
                break
            pos = nxt
            n += 1
        return n, pos
    endian = layout.endian
    while pos + 12 <= end:
        btype = int.from_bytes(data[pos : pos + 4], "little" if endian == "<" else "big")
        if btype == PCAPNG_SHB:
            if int.from_bytes(data[pos + 8 : pos + 12], "big") == PCAPNG_BYTE_ORDER:
                endian = ">"
            else:
                endian = "<"
        (blen,) = struct.unpack_from(endian + "I", data, pos + 4)
        if blen < 12 or blen % 4 or blen > MAX_BLOCK or pos + blen > end:
            break
        if btype in _PACKET_BLOCKS:
            n += 1
        pos += blen
    return n, pos


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)
