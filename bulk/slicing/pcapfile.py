"""Random access to the records of a pcap file, as tcpslice's search.c does.

A pcap file has no index, so to find the packet at a time we guess a byte
offset (interpolating between two records whose times we know), land inside
some record, and *resynchronise*: find the first offset from which a chain of
plausible record headers follows. The last packet is found the same way from
the tail. Only a few small reads are needed, whatever the file size.

Everything here works on a :class:`ByteSource` (``size`` and ``read``), so the
same search runs on a plain file (``os.pread``) and on a decompressed view of a
seekable compressed trace (:mod:`bulk.slicing.zstdframes`).
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from bulk.errors import TraceError

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
FILE_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
# libpcap accepts records up to this size (or the snaplen, if larger).
MAX_SNAPLEN = 262144
# No link carries frames above this; a larger wire length is not a header.
MAX_WIRELEN = 1 << 24
NS = 1_000_000_000
# Below this many bytes between two known records, read linearly (tcpslice:
# 100 maximal packets; real packets are small, so less suffices here).
STRAIGHT_SCAN = 64 * 1024
PROBE_READ = 8 * 1024
SCAN_READ = 1 << 20
# Record headers that must follow a candidate for it to count as a boundary.
CHAIN = 3
# How far from the end to look for the last packet before giving up.
TAIL_MAX = 16 << 20
# Records plausible around a file's time span, in seconds.
TIME_SLACK_S = 86400


class ByteSource(Protocol):
    """Random-access bytes: a file, or the decompressed view of one."""

    path: str
    size: int
    bytes_read: int  # bytes fetched from storage so far (compressed, if it is)
    granule: int  # bytes that cost one fetch (a compressed frame); 0 for a file

    def read(self, offset: int, n: int) -> bytes: ...

    def close(self) -> None: ...


class FileBytes:
    """A plain file read with ``os.pread``; counts the bytes it reads."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            from bulk.trace.stream import open_error  # noqa: PLC0415 - error path only

            raise open_error(path, exc) from None
        # A trace being captured grows: only what exists now is read.
        self.size = os.fstat(self.fd).st_size
        self.bytes_read = 0
        self.granule = 0

    def read(self, offset: int, n: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        if n == 0:
            return b""
        data = os.pread(self.fd, n, offset)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PcapFormat(NamedTuple):
    """What a pcap file header says; ``header`` is the 24 bytes verbatim."""

    endian: str  # "<" or ">"
    nanosecond: bool
    snaplen: int
    linktype: int
    header: bytes

    @property
    def maxcap(self) -> int:
        return max(self.snaplen, MAX_SNAPLEN)

    @property
    def frac_per_sec(self) -> int:
        return NS if self.nanosecond else 1_000_000

    @property
    def byte_order(self) -> str:
        return "little" if self.endian == "<" else "big"

    def compatible(self, other: PcapFormat) -> bool:
        """Records of ``other`` can be copied verbatim under this header."""
        return (self.endian, self.nanosecond, self.linktype) == (
            other.endian,
            other.nanosecond,
            other.linktype,
        )

    def with_snaplen(self, snaplen: int) -> PcapFormat:
        hdr = self.header[:16] + struct.pack(self.endian + "I", snaplen) + self.header[20:]
        return PcapFormat(self.endian, self.nanosecond, snaplen, self.linktype, hdr)


def parse_pcap_header(head: bytes) -> PcapFormat | None:
    """The format of a pcap file header, or None if ``head`` is not one."""
    if len(head) < FILE_HEADER_LEN:
        return None
    for endian in ("<", ">"):
        (magic,) = struct.unpack_from(endian + "I", head)
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            _maj, _min, _zone, _sig, snaplen, network = struct.unpack_from(
                endian + "HHiIII", head, 4
            )
            return PcapFormat(endian, magic == PCAP_MAGIC_NS, snaplen, network & 0xFFFF, head[:24])
    return None


def iter_buffer(
    buf: bytes | memoryview, pos: int, fmt: PcapFormat
) -> Iterator[tuple[int, int, int, int]]:
    """(offset, ts_ns, caplen, wirelen) of the whole records in ``buf`` from ``pos``.

    Stops at a partial record or at a header no pcap reader would accept (the
    damaged tail of a trace kept byte for byte in its last compressed frame).
    """
    unpack = struct.Struct(fmt.endian + "IIII").unpack_from
    mult = 1 if fmt.nanosecond else 1000
    maxcap = fmt.maxcap
    n = len(buf)
    while pos + RECORD_HEADER_LEN <= n:
        sec, frac, caplen, wirelen = unpack(buf, pos)
        if caplen > maxcap or pos + RECORD_HEADER_LEN + caplen > n:
            return
        yield pos, sec * NS + frac * mult, caplen, wirelen
        pos += RECORD_HEADER_LEN + caplen


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def window_spans(
    buf: bytes | bytearray | memoryview,
    pos: int,
    fmt: PcapFormat,
    start_ns: int | None,
    end_ns: int | None,
) -> tuple[list[tuple[int, int]], int]:
    """The byte ranges ``(a, b)`` of the runs of consecutive whole records in
    ``buf`` from ``pos`` with times within [start_ns, end_ns] (None: unbounded),
    and where the walk stopped (as :func:`iter_buffer`). In C when built
    (``bulk._recwalk.window_spans``): an edge frame of a compressed slice is
    some 7,000 records, 3.5 ms in Python."""
    from bulk import native  # noqa: PLC0415 - compressed traces only

    mod = native.load("recwalk")
    walk = _window_spans if mod is None else mod.window_spans
    swapped = (fmt.endian == "<") != (sys.byteorder == "little")
    spans: list[tuple[int, int]]
    spans, stop = walk(
        buf,
        pos,
        fmt.maxcap,
        swapped,
        fmt.nanosecond,
        _INT64_MIN if start_ns is None else start_ns,
        _INT64_MAX if end_ns is None else end_ns,
    )
    return spans, stop


def _window_spans(  # noqa: PLR0917 - the C twin's signature (positional)
    buf: bytes | bytearray | memoryview,
    pos: int,
    maxcap: int,
    swapped: bool,
    nanosecond: bool,
    start_ns: int,
    end_ns: int,
) -> tuple[list[tuple[int, int]], int]:
    """The twin of ``bulk._recwalk.window_spans`` (see :func:`window_spans`)."""
    little = (sys.byteorder == "little") != swapped
    unpack = struct.Struct(("<" if little else ">") + "III").unpack_from
    mult = 1 if nanosecond else 1000
    n = len(buf)
    spans: list[tuple[int, int]] = []
    run = -1
    while pos + RECORD_HEADER_LEN <= n:
        sec, frac, caplen = unpack(buf, pos)
        if caplen > maxcap or pos + RECORD_HEADER_LEN + caplen > n:
            break
        ts = sec * NS + frac * mult
        if start_ns <= ts <= end_ns:
            if run < 0:
                run = pos
        elif run >= 0:
            spans.append((run, pos))
            run = -1
        pos += RECORD_HEADER_LEN + caplen
    if run >= 0:
        spans.append((run, pos))
    return spans, pos


class Record(NamedTuple):
    offset: int
    ts_ns: int
    caplen: int
    wirelen: int

    @property
    def end(self) -> int:
        return self.offset + RECORD_HEADER_LEN + self.caplen


class _Cache:
    """One buffered window over a ByteSource, refilled on demand."""

    def __init__(self, src: ByteSource) -> None:
        self.src = src
        self.base = 0
        self.buf = b""

    def get(self, offset: int, n: int, read_size: int = PROBE_READ) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer only at the end of the source)."""
        if not (self.base <= offset and offset + n <= self.base + len(self.buf)):
            want = max(n, read_size)
            self.buf = self.src.read(offset, want)
            self.base = offset
        start = offset - self.base
        return self.buf[start : start + n]


class PcapFile:
    """Time search over the records of one pcap file (possibly decompressed).

    ``first`` and ``last`` are the first and last whole records (None for a
    file without packets); ``data_end`` is the end of the last whole record (a
    partial record after it, as a capture killed mid-write leaves, is ignored).
    """

    def __init__(self, src: ByteSource, fmt: PcapFormat | None = None) -> None:
        self.src = src
        self.path = src.path
        self._cache = _Cache(src)
        if fmt is None:
            head = src.read(0, FILE_HEADER_LEN)
            fmt = parse_pcap_header(head)
            if fmt is None:
                raise TraceError(src.path, 0, "not a pcap file")
        self.fmt = fmt
        self._hdr = struct.Struct(fmt.endian + "IIII")
        self._mult = 1 if fmt.nanosecond else 1000
        self._lo_sec = 0
        self._hi_sec = 0  # time bounds for plausible headers; 0 while unknown
        self.first = self._record_at(FILE_HEADER_LEN, strict=False)
        self.last: Record | None = None
        self.data_end = FILE_HEADER_LEN
        if self.first is not None:
            self.last = self._find_last()
            self.data_end = self.last.end
        if self.first is not None and self.last is not None:
            a, b = sorted((self.first.ts_ns // NS, self.last.ts_ns // NS))
            self._lo_sec, self._hi_sec = a - TIME_SLACK_S, b + TIME_SLACK_S

    # -- record headers --------------------------------------------------------

    def _header(self, offset: int) -> tuple[int, int, int, int] | None:
        raw = self._cache.get(offset, RECORD_HEADER_LEN)
        if len(raw) < RECORD_HEADER_LEN:
            return None
        sec, frac, caplen, wirelen = self._hdr.unpack(raw)
        return sec, frac, caplen, wirelen

    def _record_at(self, offset: int, strict: bool) -> Record | None:
        """The whole record at ``offset`` if its header is sane (strict: plausible)."""
        h = self._header(offset)
        if h is None:
            return None
        sec, frac, caplen, wirelen = h
        if caplen > self.fmt.maxcap or frac >= self.fmt.frac_per_sec:
            return None
        if strict and (
            caplen > wirelen
            or wirelen > MAX_WIRELEN
            or (self._hi_sec and not self._lo_sec <= sec <= self._hi_sec)
        ):
            return None
        if offset + RECORD_HEADER_LEN + caplen > self.src.size:
            return None
        return Record(offset, sec * NS + frac * self._mult, caplen, wirelen)

    def record(self, offset: int) -> Record:
        """The record that starts at ``offset`` (a known boundary)."""
        rec = self._record_at(offset, strict=False)
        if rec is None:
            raise TraceError(self.path, offset, "corrupt or truncated record header")
        return rec

    # -- resynchronisation -----------------------------------------------------

    def _chains(self, rec: Record, limit: int) -> bool:
        """Do CHAIN plausible records follow ``rec`` (or does it end at ``limit``)?"""
        pos = rec.end
        for _ in range(CHAIN):
            if pos == limit:
                return True
            nxt = self._record_at(pos, strict=True)
            if nxt is None:
                return False
            pos = nxt.end
        return True

    def boundary_at_or_after(self, pos: int, limit: int | None = None) -> Record | None:
        """The first record boundary in [pos, limit) (limit: the end of the data)."""
        end = self.data_end if limit is None else limit
        pos = max(pos, FILE_HEADER_LEN)
        if pos == FILE_HEADER_LEN:
            return self.first if self.first is not None and pos < end else None
        stop = min(end, pos + RECORD_HEADER_LEN + self.fmt.maxcap + 1)
        if stop <= pos:
            return None
        unpack = self._hdr.unpack_from
        fps = self.fmt.frac_per_sec
        maxcap = self.fmt.maxcap
        mult = self._mult
        lo, hi = self._lo_sec, self._hi_sec or 0xFFFFFFFF
        base = pos
        while base < stop:
            # Candidates in [base, base + PROBE_READ); the read goes further so
            # that the records confirming a candidate are usually in it too.
            count = min(stop - base, PROBE_READ // 2)
            buf = self._cache.get(base, count + PROBE_READ, read_size=count + PROBE_READ)
            for i in range(max(0, min(count, len(buf) - RECORD_HEADER_LEN + 1))):
                sec, frac, caplen, wirelen = unpack(buf, i)
                if (
                    frac >= fps
                    or caplen > wirelen
                    or caplen > maxcap
                    or wirelen > MAX_WIRELEN
                    or sec < lo
                    or sec > hi
                ):
                    continue
                rec = Record(base + i, sec * NS + frac * mult, caplen, wirelen)
                if rec.end <= self.data_end and self._chains(rec, self.data_end):
                    return rec
            base += count
        return None

    def _find_last(self) -> Record:
        """The last whole record: resynchronise in the tail and follow the chain."""
        assert self.first is not None
        size = self.src.size
        span = 16 * 1024
        while True:
            start = max(FILE_HEADER_LEN, size - span)
            if start == FILE_HEADER_LEN:
                return self._follow(self.first)
            if span > TAIL_MAX:
                raise TraceError(
                    self.path, start, "cannot find the last packet: the end of the file is not pcap"
                )
            self._cache.get(start, size - start, read_size=size - start)
            for p in range(start, min(size, start + RECORD_HEADER_LEN + self.fmt.maxcap)):
                rec = self._record_at(p, strict=True)
                if rec is None:
                    continue
                last, count = self._follow_counting(rec)
                if count >= CHAIN + 1 and self._ends_file(last):
                    return last
            span *= 4

    def _ends_file(self, rec: Record) -> bool:
        """True if nothing but a partial record follows ``rec``."""
        rest = self.src.size - rec.end
        if rest == 0:
            return True
        if rest < RECORD_HEADER_LEN:
            return True
        h = self._header(rec.end)
        assert h is not None
        return h[2] <= self.fmt.maxcap and rec.end + RECORD_HEADER_LEN + h[2] > self.src.size

    def _follow_counting(self, rec: Record) -> tuple[Record, int]:
        count = 1
        while True:
            nxt = self._record_at(rec.end, strict=False)
            if nxt is None:
                return rec, count
            rec = nxt
            count += 1

    def _follow(self, rec: Record) -> Record:
        return self._follow_counting(rec)[0]

    # -- time search -----------------------------------------------------------

    def find_time(self, target_ns: int, lo: Record | None = None) -> int:
        """Offset of the first record with a time >= ``target_ns`` (``data_end`` if none).

        Assumes the file is in time order (as tcpslice does). ``lo`` is a known
        record at or before the answer (default: the first record).
        """
        first, last = (lo or self.first), self.last
        if first is None or last is None:
            return self.data_end
        if first.ts_ns >= target_ns:
            return first.offset
        if last.ts_ns < target_ns:
            return self.data_end
        low, high = first, last  # low.ts < target <= high.ts
        probe_limit = high.offset
        # Below this span, read linearly (for a compressed view: one frame,
        # which is decompressed whole anyway).
        straight = max(STRAIGHT_SCAN, getattr(self.src, "granule", 0))
        moved = ""  # which bound the last probe moved
        stalls = 0
        while probe_limit - low.offset > straight:
            span = probe_limit - low.offset
            if stalls < 2 and high.ts_ns > low.ts_ns:
                frac = (target_ns - low.ts_ns) / (high.ts_ns - low.ts_ns)
                guess = low.offset + int(frac * (high.offset - low.offset))
                # Aim past the estimate, away from the bound that just moved:
                # an accurate estimate then brackets the answer tightly.
                if moved == "low":
                    guess += guess - low.offset + PROBE_READ
                elif moved == "high":
                    guess -= probe_limit - guess + PROBE_READ
            else:
                guess = low.offset + span // 2
                stalls = 0
            margin = span // 64
            guess = min(max(guess, low.offset + margin + 1), probe_limit - margin - 1)
            rec = self.boundary_at_or_after(guess, probe_limit)
            if rec is None:
                probe_limit = guess
                moved = "high"
            elif rec.ts_ns < target_ns:
                low = rec
                moved = "low"
            else:
                high = rec
                probe_limit = rec.offset
                moved = "high"
            stalls = stalls + 1 if (probe_limit - low.offset) * 2 > span else 0
        for rec in self.scan(low.offset, high.offset, read_size=min(straight, 4 * PROBE_READ)):
            if rec.ts_ns >= target_ns:
                return rec.offset
        return high.offset

    def scan(self, start: int, end: int, read_size: int = SCAN_READ) -> Iterator[Record]:
        """Records from boundary ``start`` up to ``end``, read sequentially."""
        pos = start
        end = min(end, self.data_end)
        unpack = self._hdr.unpack_from
        mult = self._mult
        maxcap = self.fmt.maxcap
        while pos < end:
            buf = self._cache.get(pos, min(read_size, end - pos), read_size=read_size)
            i = 0
            n = len(buf)
            while i + RECORD_HEADER_LEN <= n:
                sec, frac, caplen, wirelen = unpack(buf, i)
                if caplen > maxcap:
                    raise TraceError(
                        self.path, pos + i, f"corrupt record: captured length {caplen}"
                    )
                if i + RECORD_HEADER_LEN + caplen > n:
                    break
                yield Record(pos + i, sec * NS + frac * mult, caplen, wirelen)
                i += RECORD_HEADER_LEN + caplen
            if i == 0:
                rec = self.record(pos)  # one record larger than the buffer
                yield rec
                i = rec.end - pos
            pos += i

    def packets(self, start: int, end: int) -> Iterator[tuple[int, int, bytes]]:
        """(ts_ns, wirelen, data) of the records from boundary ``start`` up to ``end``."""
        pos = start
        end = min(end, self.data_end)
        unpack = self._hdr.unpack_from
        mult = self._mult
        maxcap = self.fmt.maxcap
        while pos < end:
            buf = self._cache.get(pos, min(SCAN_READ, end - pos), read_size=SCAN_READ)
            i = 0
            n = len(buf)
            while i + RECORD_HEADER_LEN <= n:
                sec, frac, caplen, wirelen = unpack(buf, i)
                if caplen > maxcap:
                    raise TraceError(
                        self.path, pos + i, f"corrupt record: captured length {caplen}"
                    )
                j = i + RECORD_HEADER_LEN
                if j + caplen > n:
                    break
                yield sec * NS + frac * mult, wirelen, buf[j : j + caplen]
                i = j + caplen
            if i == 0:
                rec = self.record(pos)  # one record larger than the buffer
                data = self._cache.get(pos + RECORD_HEADER_LEN, rec.caplen, rec.caplen)
                yield rec.ts_ns, rec.wirelen, data
                i = rec.end - pos
            pos += i

    def close(self) -> None:
        self.src.close()
