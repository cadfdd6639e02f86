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
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple, Protocol, cast

from bulk import native
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
    data: bytes | bytearray  # pcap frames are bytearrays (no copy), never changed after
    stats: FrameStats


class Layout(NamedTuple):
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
        """Walk pcap records, one frame at a time (:func:`walk_pcap`, in C when built).

        The buffer is filled to ``margin`` bytes past the frame's cut mark, so a
        record starting before the mark ends inside the buffer: the walk stops
        short of the mark only at the end of the file or at damage. A frame that
        is most of its buffer (the usual case: frames of MiBs) is that buffer,
        cut at the record boundary and handed on without a copy; only the bytes
        after the boundary (about ``margin``) are copied into the next buffer.
        Small frames are copied out of a shared buffer.
        """
        lay = self.layout
        walker = _walker()
        walk = walker.walk_pcap
        size = self.frame_size
        swapped = _swapped(lay.endian)
        maxcap = max(lay.snaplen, MAX_SNAPLEN)
        margin = 16 + maxcap  # a whole record that starts before a mark ends before mark + margin
        unpack = struct.Struct(lay.endian + "III").unpack_from
        step = max(1 << 20, 2 * size)  # buffer growth (see _fill)
        data = bytearray(self._head)
        eof = False
        start = 0  # frame start in data
        pos = 24  # next record in data
        while True:
            # The frame ends at the first record boundary at or after cut (and holds at
            # least one record: the first frame also holds the file header).
            cut = max(start + size, pos + 1)
            if not eof and len(data) < cut + margin:
                if start:
                    data = data[start:]
                    pos -= start
                    cut -= start
                    start = 0
                data, eof = _fill(self._f, data, cut + margin, step, walker.new_buffer)
            end = len(data)
            pos, n, first, last, lo, hi = walk(data, pos, cut, maxcap, swapped, lay.nanosecond)
            stats = _stats(n, first, last, lo, hi)
            if pos >= cut:
                if start == 0 and 2 * pos >= end:
                    rest = data[pos:]
                    del data[pos:]
                    yield Chunk(data, stats)
                    data = rest
                    pos = 0
                else:
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
            rest = data[pos:]
            if n or pos > start:
                if start == 0:
                    del data[pos:]
                    yield Chunk(data, stats)
                else:
                    yield Chunk(data[start:pos], stats)
            yield from self._tail(bytes(rest))
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


def count_packets(
    layout: Layout, data: bytes | bytearray | memoryview, pos: int = 0
) -> tuple[int, int]:
    """Walk whole records of ``data`` from ``pos``: (packets, offset where the walk stopped).

    A frame written on record boundaries walks to exactly ``len(data)``.
    """
    walker = _walker()
    if layout.kind == "pcap":
        maxcap = max(layout.snaplen, MAX_SNAPLEN)
        return walker.count_pcap(data, pos, maxcap, _swapped(layout.endian))
    return walker.count_pcapng(data, pos, layout.endian == ">")


# -- the walks, in Python; bulk._recwalk (csrc/recwalk.c) does the same in C ------------

_HOST_LITTLE = sys.byteorder == "little"


def _swapped(endian: str) -> bool:
    """Whether a trace in byte order ``endian`` (``<``, ``>``) is swapped on this host."""
    return (endian == "<") != _HOST_LITTLE


def _endian(swapped: bool) -> str:
    return "<" if swapped != _HOST_LITTLE else ">"


def walk_pcap(  # noqa: PLR0917 - the C twin's signature (positional)
    data: bytes | bytearray | memoryview,
    pos: int,
    cut: int,
    maxcap: int,
    swapped: bool,
    nanosecond: bool,
) -> tuple[int, int, int, int, int, int]:
    """Walk whole pcap records from ``pos`` while ``pos < cut``.

    Stops at the first record at or past ``cut``, at a record that ``data``
    ends inside, or at a captured length above ``maxcap``. Returns ``(pos,
    packets, first, last, min, max)``: where it stopped, the records walked, and
    their times in ns (all 0 when none was walked). The twin of
    ``bulk._recwalk.walk_pcap``.

    The inner loop checks nothing but the captured length while the records
    are ``16 + maxcap`` bytes or more from the end of ``data`` (a record starting
    there must end inside it); a careful walk with bounds checks does the rest.
    """
    unpack = struct.Struct(_endian(swapped) + "III").unpack_from
    # Times are compared as sec * per_s + frac: the time in ns divided by mult,
    # exactly (also for a damaged record's fraction >= per_s).
    per_s, mult = (1_000_000_000, 1) if nanosecond else (1_000_000, 1000)
    end = len(data)
    n = 0
    first = lo = hi = key = 0
    if pos + 16 <= end:
        sec, frac, caplen = unpack(data, pos)
        first = lo = hi = key = sec * per_s + frac
    safe = min(cut, end - 16 - maxcap)
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
    if n == 0:
        return pos, 0, 0, 0, 0, 0
    return pos, n, first * mult, key * mult, lo * mult, hi * mult


def count_pcap(
    data: bytes | bytearray | memoryview, pos: int, maxcap: int, swapped: bool
) -> tuple[int, int]:
    """Walk whole pcap records from ``pos`` to the end of ``data``: ``(packets, pos)``
    where the walk stopped (see :func:`walk_pcap`). The twin of ``bulk._recwalk.count_pcap``."""
    unpack = struct.Struct(_endian(swapped) + "8xI").unpack_from
    end = len(data)
    n = 0
    while pos + 16 <= end:
        (caplen,) = unpack(data, pos)
        nxt = pos + 16 + caplen
        if nxt > end or caplen > maxcap:
            break
        pos = nxt
        n += 1
    return n, pos


def count_pcapng(
    data: bytes | bytearray | memoryview, pos: int, big_endian: bool
) -> tuple[int, int]:
    """Walk whole pcapng blocks from ``pos``: ``(packet blocks, pos)`` where the walk
    stopped (a bad block length, or the end of ``data``). A section header block
    sets the byte order of the blocks after it. The twin of
    ``bulk._recwalk.count_pcapng``."""
    endian = ">" if big_endian else "<"
    end = len(data)
    n = 0
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


class _Walker(Protocol):
    def walk_pcap(  # noqa: PLR0917 - bulk._recwalk.walk_pcap
        self,
        data: bytes | bytearray | memoryview,
        pos: int,
        cut: int,
        maxcap: int,
        swapped: bool,
        nanosecond: bool,
    ) -> tuple[int, int, int, int, int, int]: ...

    def count_pcap(
        self, data: bytes | bytearray | memoryview, pos: int, maxcap: int, swapped: bool
    ) -> tuple[int, int]: ...

    def count_pcapng(
        self, data: bytes | bytearray | memoryview, pos: int, big_endian: bool
    ) -> tuple[int, int]: ...

    def new_buffer(self, n: int) -> bytearray: ...


def _walker() -> _Walker:
    """``bulk._recwalk`` when built (and not disabled by ``BULK_NO_NATIVE``), else this
    module's twins."""
    mod = native.load("recwalk")
    if mod is not None:
        return cast(_Walker, mod)
    return cast(_Walker, sys.modules[__name__])


def new_buffer(n: int) -> bytearray:
    """A buffer of ``n`` bytes to be filled before it is read (the twin of
    ``bulk._recwalk.new_buffer``, which does not zero them first)."""
    return bytearray(n)


def _fill(
    f: BinaryIO,
    data: bytearray,
    want: int,
    step: int,
    new: Callable[[int], bytearray] = new_buffer,
) -> tuple[bytearray, bool]:
    """A new buffer (made by ``new``, its bytes unset): ``data``, then bytes read from
    ``f`` up to ``want`` bytes in all, and whether the end of ``f`` was reached. Only
    bytes written are kept (the rest is cut off), so no unset byte is ever read.

    The buffer starts at ``step`` bytes past ``data`` at most and grows only as
    bytes arrive, so that a huge ``want`` (a hostile snaplen in the file header
    makes the margin up to 4 GiB) costs no more memory than the file has."""
    have = len(data)
    buf = new(max(have + (1 << 20), min(want, have + step)))
    buf[:have] = data
    eof = False
    readinto = getattr(f, "readinto", None)
    while have < want:
        if have == len(buf):
            buf.extend(bytes(min(want - have, max(len(buf), step))))
        with memoryview(buf) as whole, whole[have:] as view:
            if readinto is not None:
                got = readinto(view)
            else:  # a stream with read() alone
                more = f.read(len(view))
                got = len(more)
                view[:got] = more
        if not got:
            eof = True
            break
        have += got
    del buf[have:]
    return buf, eof


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
