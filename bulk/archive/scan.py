"""Scan a trace once: its totals, time range and sparse time index.

The time index has one entry about every ``every`` bytes (1 MiB by default):
the record number, the byte offset of its record header in the uncompressed
pcap stream, its time, and the lowest and highest time of the records from
that entry up to the next one. A slicer looking for time T starts at the last
entry whose predecessors' highest times are all below T, so it stays exact
even when a live capture wrote packets slightly out of time order.

Uncompressed little-endian microsecond pcap (what ``bulk capture`` writes) is
scanned by libpcap in batches (pcapy-ng ``next_batch``), about ten times
faster than decoding packets in Python; everything else (pcapng, nanosecond,
big-endian, compressed) goes through :func:`bulk.trace.open_trace`. A cut or
corrupt tail stops the scan at the last whole record and is reported in
``error`` with ``end_offset``, which is what the repair of a file left open
by a crash needs.
"""

from __future__ import annotations

import array
import bisect
import itertools
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bulk.errors import TraceError
from bulk.trace import open_trace
from bulk.trace.reader import PCAP_MAGIC_US

INDEX_BYTES = 1 << 20
PCAP_HEADER = 24
RECORD_HEADER = 16
_BATCH = 4096
_FILE_HEADER = struct.Struct("<IHHiIII")
_MAX_CAPLEN = 262144  # libpcap's largest snaplen: records up to it are read whole


@dataclass(frozen=True)
class IndexEntry:
    """One point of the sparse time index of a file."""

    packet: int  # record number, from 0
    offset: int  # byte offset of the record header in the uncompressed pcap stream
    ts_ns: int  # time of that record
    min_ns: int  # lowest time of the records from here to the next entry
    max_ns: int  # highest time of the records from here to the next entry


@dataclass
class TraceScan:
    """What one pass over a trace found."""

    path: str
    format: str = ""
    compression: str | None = None
    linktype: int = -1
    snaplen: int = 0
    nanosecond: bool = False
    packets: int = 0
    bytes: int = 0  # captured packet bytes, without record headers
    end_offset: int = 0  # uncompressed bytes up to the end of the last whole record
    first_ns: int | None = None  # time of the first record in file order
    last_ns: int | None = None  # time of the last record in file order
    min_ns: int | None = None
    max_ns: int | None = None
    entries: list[IndexEntry] = field(default_factory=list)
    error: str | None = None  # a cut or corrupt tail; end_offset says where it starts
    zero_tail: bool = False  # the scan stopped at a zero-filled record (see stop_at_zero)


def scan_trace(path: str, every: int = INDEX_BYTES, stop_at_zero: bool = False) -> TraceScan:
    """Scan ``path``. A file that is not a trace raises TraceError.

    ``stop_at_zero`` ends the scan at the first all-zero record (time 0,
    length 0): what a file system may leave at the end of a file after a power
    loss. The repair of an open file asks for it; ordinary scans do not.
    """
    if _fast_format(path):
        scan = _scan_libpcap(path, every, stop_at_zero)
        if scan is not None:
            return scan
    return _scan_python(path, every, stop_at_zero)


def _fast_format(path: str) -> bool:
    if sys.byteorder != "little":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(PCAP_HEADER)
    except OSError:
        return False
    return len(head) == PCAP_HEADER and int.from_bytes(head[:4], "little") == PCAP_MAGIC_US


class _Indexer:
    """Builds entries and totals from runs of records in file order.

    A run is given as sort keys (any integers ordered like the times) and
    captured lengths; ``to_ns`` turns a key into nanoseconds.
    """

    def __init__(self, scan: TraceScan, every: int, to_ns: Callable[[int], int]) -> None:
        self.scan = scan
        self.every = max(every, 1)
        self.to_ns = to_ns
        self.next_mark = PCAP_HEADER  # the first record always gets an entry
        self.offset = PCAP_HEADER
        self.lo: int | None = None
        self.hi: int | None = None
        self.seg: list[int] | None = None  # [packet, offset, key, min key, max key]

    def close_segment(self) -> None:
        if self.seg is not None:
            p, off, key, lo, hi = self.seg
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
            ns = self.to_ns
            self.scan.entries.append(IndexEntry(p, off, ns(key), ns(lo), ns(hi)))
            self.seg = None

    def add_run(self, keys: Sequence[int], caps: Sequence[int]) -> None:
        n = len(caps)
        if n == 0:
            return
        scan = self.scan
        base_packet = scan.packets
        base = self.offset
        cum = list(itertools.accumulate(caps, initial=0))

        def start(i: int) -> int:
            return base + RECORD_HEADER * i + cum[i]

        i = 0
        while i < n:
            # The first record at or after the mark opens the next entry.
            j = bisect.bisect_left(range(n), self.next_mark, lo=i, key=start)
            if j > i and self.seg is not None:
                chunk = keys[i:j] if i or j < n else keys
                lo, hi = min(chunk), max(chunk)
                self.seg[3] = min(self.seg[3], lo)
                self.seg[4] = max(self.seg[4], hi)
            if j >= n:
                break
            self.close_segment()
            key = keys[j]
            self.seg = [base_packet + j, start(j), key, key, key]
            self.next_mark = start(j) + self.every
            i = j + 1
        # Every record belongs to a segment (the first record opens one).
        assert self.seg is not None
        lo = self.seg[3] if self.lo is None else min(self.lo, self.seg[3])
        hi = self.seg[4] if self.hi is None else max(self.hi, self.seg[4])
        ns = self.to_ns
        scan.min_ns, scan.max_ns = ns(lo), ns(hi)
        if scan.first_ns is None:
            scan.first_ns = ns(keys[0])
        scan.last_ns = ns(keys[n - 1])
        scan.packets += n
        scan.bytes += cum[n]
        self.offset = start(n)
        scan.end_offset = self.offset


def _usec_key_ns(key: int) -> int:
    """A libpcap batch key (seconds << 32 | microseconds) in nanoseconds."""
    return (key >> 32) * 1_000_000_000 + (key & 0xFFFFFFFF) * 1000


def _identity(value: int) -> int:
    return value


def _scan_libpcap(path: str, every: int, stop_at_zero: bool) -> TraceScan | None:
    """libpcap's reader in batches; None when libpcap cannot open the file at all."""
    # Here, not at the top: the catalogue imports this module, and most of its
    # users (bulk compress, say) never scan a trace (~2 ms of their start).
    import pcapy  # noqa: PLC0415

    with open(path, "rb") as f:
        _magic, _vmaj, _vmin, _zone, _sig, snaplen, network = _FILE_HEADER.unpack(
            f.read(PCAP_HEADER)
        )
    try:
        handle = pcapy.open_offline(path)
    except pcapy.PcapError:
        return None
    scan = TraceScan(path, format="pcap", linktype=network & 0xFFFF, snaplen=snaplen)
    scan.end_offset = PCAP_HEADER
    indexer = _Indexer(scan, every, _usec_key_ns)
    # libpcap cuts a record longer than the file's snaplen down to the snaplen
    # and skips the rest: its reported length is then not the record's length
    # on disk, and offsets computed from it are wrong. Below the largest
    # snaplen, a record at the snaplen may be such a record: the Python reader
    # (which reads lengths from the file) scans those files instead.
    clamp = snaplen if 0 < snaplen < _MAX_CAPLEN else None
    try:
        _drain(handle, indexer, stop_at_zero, _BATCH, clamp)
    except _Clamped:
        return None
    except pcapy.PcapError as exc:
        # libpcap drops the whole batch that met the damage: read that batch
        # again one record at a time, to keep every whole record before it.
        handle = pcapy.open_offline(path)
        _skip(handle, scan.packets)
        try:
            _drain(handle, indexer, stop_at_zero, 1, clamp)
        except _Clamped:
            return None
        except pcapy.PcapError:
            pass
        scan.error = str(exc)
    indexer.close_segment()
    return scan


class _Clamped(Exception):
    """A record's length as libpcap reports it may have been cut to the snaplen."""


def _skip(handle: Any, count: int) -> None:
    while count > 0:
        _data, meta = handle.next_batch(min(count, _BATCH))
        if not meta:
            return
        count -= len(meta) // 16


def _drain(
    handle: Any, indexer: _Indexer, stop_at_zero: bool, batch: int, clamp: int | None = None
) -> None:
    while True:
        _data, meta = handle.next_batch(batch)
        if not meta:
            return
        a = array.array("I")
        a.frombytes(meta)
        caps = a[3::4]
        if clamp is not None and max(caps) >= clamp:
            raise _Clamped
        # (usec, sec) pairs read as little-endian 64-bit words: sec << 32 | usec,
        # ordered like the times, built without a Python loop per packet.
        pairs = array.array("I", bytes(len(a) * 2))
        pairs[0::2] = a[1::4]
        pairs[1::2] = a[0::4]
        keys = array.array("Q")
        keys.frombytes(pairs.tobytes())
        n = len(caps)
        if stop_at_zero and 0 in keys:
            for i in range(n):
                if keys[i] == 0 and caps[i] == 0:
                    n = i
                    indexer.scan.zero_tail = True
                    break
        indexer.add_run(keys[:n], caps[:n])
        if indexer.scan.zero_tail:
            return


def _scan_python(path: str, every: int, stop_at_zero: bool) -> TraceScan:
    """Any trace the trace layer reads; pcapng gets totals but no index entries."""
    scan = TraceScan(path)
    with open_trace(path) as reader:
        scan.format = reader.format
        scan.compression = reader.compression
        scan.linktype = reader.linktype
        scan.snaplen = reader.snaplen
        scan.nanosecond = reader.nanosecond
        pcap = reader.format == "pcap"
        indexer = _Indexer(scan, every, _identity)
        scan.end_offset = PCAP_HEADER if pcap else 0
        times: list[int] = []
        caps: list[int] = []
        try:
            for pkt in reader:
                if stop_at_zero and pkt.ts_ns == 0 and pkt.wirelen == 0 and not pkt.data:
                    scan.zero_tail = True
                    break
                times.append(pkt.ts_ns)
                caps.append(len(pkt.data))
                if len(caps) >= _BATCH:
                    indexer.add_run(times, caps)
                    times, caps = [], []
        except TraceError as exc:
            scan.error = exc.reason
            if not pcap:
                scan.end_offset = exc.offset or 0
        indexer.add_run(times, caps)
        indexer.close_segment()
        if not pcap:
            # Offsets of pcapng blocks are not derived from packet lengths.
            scan.entries.clear()
            if scan.error is None:
                scan.end_offset = reader.offset
    return scan
