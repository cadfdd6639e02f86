"""One worker's series of trace files, written by libpcap's own dumper.

Two engines (see docs/ARCHITECTURE.md, "Capture"):

- :class:`DumpSeries` (the system libpcap through ctypes, the default): the
  hot path is ``pcap_dispatch(p, n, pcap_dump, dumper)``, all C, as in
  ``tcpdump -w``. Python runs once per dispatch call: the dumper's position
  before a dispatch is a record boundary, so the file's size, its first
  packet time and its sparse time index come from those boundaries (a flush
  and a 16-byte ``pread`` about every MiB) without scanning the file again.
- :class:`Series` (pcapy-ng, the fallback): ``handle.dispatch(n,
  dumper.dump)``, which builds a header and a bytes object per packet. Its
  dumper cannot be flushed or asked its position, so packets are counted from
  dispatch's return values, bytes from the file size once it is closed, and
  the archiver scans the closed file for its time index.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pcapy

from bulk.archive.naming import TraceName, create_exclusive, series_names
from bulk.archive.scan import INDEX_BYTES, PCAP_HEADER, RECORD_HEADER
from bulk.errors import ArchiveError

log = logging.getLogger("bulk.capture")
DISPATCH_BATCH = 65536
# The libpcap engine's dispatch calls take at most this many packets, so a
# size rotation overshoots by at most one such batch.
DUMP_BATCH = 8192
# Packets in a capture ring are in time order but for a small disorder (their
# times are taken on several CPUs before the ring slot is claimed); an index
# entry's lowest time is its own time less this allowance. See DumpSeries.
REORDER_NS = 100_000_000
_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, caplen, len


@dataclass(frozen=True)
class OpenedFile:
    path: str  # X.pcap.open
    name: TraceName
    opened_ns: int


@dataclass(frozen=True)
class ClosedFile:
    """A file just closed by the capture, still under its open name."""

    opened: OpenedFile
    packets: int
    bytes: int  # captured packet bytes
    size: int  # file size
    first_ns: int | None
    drops: int
    ifdrops: int
    closed_ns: int
    # The libpcap engine's own index: the file's last (latest) time and the
    # sparse time index as [packet, offset, ts_ns, min_ns, max_ns] lists;
    # None when the archiver has to scan the file.
    last_ns: int | None = None
    entries: list[list[int]] | None = None


class Series:
    """The files of one (interface, worker) series; one is open at any time."""

    def __init__(
        self,
        handle: Any,
        directory: str,
        interface: str,
        worker: int,
        next_seq: int,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.handle = handle
        self.directory = directory
        self.interface = interface
        self.worker = worker
        self.seq = next_seq
        self.clock = clock
        # The time in a name never goes back within a series (a clock stepped
        # back): name order stays capture order. The true times are in the
        # catalogue (opened_ns) and in the packets.
        self._name_time_s = max(
            (n.time_s for n in series_names(directory, interface, worker)), default=0
        )
        self.current: OpenedFile | None = None
        self.packets = 0  # in the current file
        self.first_ns: int | None = None
        self._dumper: Any = None
        self.dump: Callable[[Any, bytes], None] = _no_dump
        self._base_stats = (0, 0)  # (drop, ifdrop) when the current file was opened
        # Worker k > 0 of a fanout group drops packets stamped before it joined
        # (they were delivered to the group too); see handle.join_fanout.
        self.drop_before_us: int | None = None
        self.skipped = 0

    def open_next(self) -> OpenedFile:
        """Create the next file (never reusing a name) and point the dumper at it."""
        now = self.clock()
        name_s = max(now // 1_000_000_000, self._name_time_s)
        name = TraceName(name_s, self.interface, self.seq, self.worker, ".open")
        path, name = create_exclusive(self.directory, name)
        self.seq = name.seq + 1
        self._name_time_s = name.time_s
        if getattr(self.handle, "engine", "") != "libpcap":
            # pcapy-ng's dump_open is fopen(path, "w"): truncating the empty file
            # would arm ext4's "auto da_alloc", and closing the file after
            # hundreds of MB would then write them all back inside close(), a
            # stall at every rotation. The name stays reserved (only this
            # capture writes this series); fopen creates the file again.
            os.unlink(path)
        try:
            dumper = self.handle.dump_open(path)
        except pcapy.PcapError as exc:
            raise ArchiveError(f"{path}: cannot write: {exc}") from None
        old = self._dumper
        self._dumper = dumper
        self.dump = dumper.dump
        self.current = OpenedFile(path, name, now)
        self.packets = 0
        self.first_ns = None
        if old is not None:
            old.close()
        return self.current

    def pump(self, limit: int = DISPATCH_BATCH) -> int:
        """Write the packets the kernel has ready (up to about ``limit``). Returns the count."""
        handle = self.handle
        total: int = 0
        if self.drop_before_us is not None:
            total = max(int(handle.dispatch(limit, self._dedupe)), 0)
            self.packets += total
            return total
        if self.first_ns is None:
            n = int(handle.dispatch(1, self._first))
            if n <= 0:
                return 0
            total = n
        n = int(handle.dispatch(limit, self.dump))
        total += max(n, 0)
        self.packets += total
        return total

    def _first(self, hdr: Any, data: bytes) -> None:
        self.dump(hdr, data)
        sec, usec = hdr.getts()
        self.first_ns = sec * 1_000_000_000 + usec * 1000

    def _dedupe(self, hdr: Any, data: bytes) -> None:
        sec, usec = hdr.getts()
        if self.drop_before_us is not None and sec * 1_000_000 + usec < self.drop_before_us:
            self.skipped += 1
            self.packets -= 1  # dispatch counts it; it is not written
            return
        self.dump(hdr, data)
        if self.first_ns is None:
            self.first_ns = sec * 1_000_000_000 + usec * 1000

    def current_size(self) -> int:
        """Bytes of the open file on disk (the dumper's buffer, a few KiB, not included)."""
        if self.current is None:
            return 0
        try:
            return os.path.getsize(self.current.path)
        except OSError:
            return 0

    def close_current(self, drops: int, ifdrops: int, reopen: bool) -> ClosedFile | None:
        """Close the open file (opening the next one first when ``reopen``).

        ``drops``/``ifdrops`` are the kernel's cumulative counters now; the file
        gets the increase since it was opened.
        """
        opened = self.current
        if opened is None:
            return None
        packets, first_ns = self.packets, self.first_ns
        dumper = self._dumper
        if reopen:
            self._dumper = None  # open_next must not close it: closed below, after the switch
            self.open_next()
        else:
            self._dumper = None
            self.dump = _no_dump
            self.current = None
            self.packets = 0
            self.first_ns = None
        dumper.close()
        closed_ns = self.clock()
        try:
            size = os.path.getsize(opened.path)
        except OSError:
            size = PCAP_HEADER
        base_drop, base_ifdrop = self._base_stats
        self._base_stats = (drops, ifdrops)
        return ClosedFile(
            opened=opened,
            packets=packets,
            bytes=max(size - PCAP_HEADER - RECORD_HEADER * packets, 0),
            size=size,
            first_ns=first_ns,
            drops=drops - base_drop,
            ifdrops=ifdrops - base_ifdrop,
            closed_ns=closed_ns,
        )

    def set_base_stats(self, drops: int, ifdrops: int) -> None:
        self._base_stats = (drops, ifdrops)


def _no_dump(hdr: Any, data: bytes) -> None:
    raise RuntimeError("no open trace file")


class DumpSeries(Series):
    """The libpcap engine's series: ``pcap_dispatch`` straight into ``pcap_dump``.

    Between two dispatch calls the dumper's position (``pcap_dump_ftell``) is
    the end of a whole record. About every ``every`` bytes the next dispatch's
    first record becomes an index entry: the dumper is flushed and the
    record's header read back (``pread``) for its time. An entry's highest
    time is the clock when the last dispatch before the next entry returned
    (no packet read then was stamped later); its lowest time is its own time
    less :data:`REORDER_NS` (packets from several CPUs can be slightly out of
    order in the ring), except for the first entry. The file's first time is
    its first record's, its last time the latest of the last dispatch's
    records, read back at close, and bounds every segment. ``bulk index FILE``
    rescans a file exactly.
    """

    def __init__(self, *args: Any, every: int = INDEX_BYTES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every = max(every, 1)
        self._reader = -1  # O_RDONLY descriptor of the open file, for pread
        self._reset_index()

    def _reset_index(self) -> None:
        self.entries: list[list[int]] = []
        self._indexing = True
        self._next_mark = PCAP_HEADER
        self._tail = (0, PCAP_HEADER)  # (packet, offset) of the last dispatch's first record
        self._last_clock = 0  # the clock after the last dispatch that wrote packets

    def open_next(self) -> OpenedFile:
        old_reader = self._reader
        opened = super().open_next()
        try:
            self._reader = os.open(opened.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ArchiveError(f"{opened.path}: cannot read back: {exc.strerror}") from None
        if old_reader >= 0:
            os.close(old_reader)
        self._reset_index()
        return opened

    def pump(self, limit: int = DUMP_BATCH) -> int:
        dumper = self._dumper
        if dumper is None:
            return 0
        offset = dumper.ftell()
        if self.drop_before_us is not None:
            skipped = self.skipped
            n = max(int(self.handle.dispatch(min(limit, DUMP_BATCH), self._dedupe)), 0)
            written = n - (self.skipped - skipped)
        else:
            n = written = self.handle.dump_all(min(limit, DUMP_BATCH), dumper)
        if written > 0:
            if offset >= self._next_mark:
                self._mark(offset)
            self._tail = (self.packets, offset)
            self.packets += written
            self._last_clock = self.clock()
        return n

    def _mark(self, offset: int) -> None:
        """Make the record at ``offset`` (just written) an index entry.

        A failed write (flush) or read-back leaves the file to the archiver's
        scan; the capture goes on."""
        if not self._indexing:
            return
        try:
            self._dumper.flush()
            head = os.pread(self._reader, RECORD_HEADER, offset)
        except OSError as exc:
            self._index_failed(exc)
            return
        if len(head) < RECORD_HEADER:
            self._index_failed(OSError(f"record at byte {offset} not found"))
            return
        sec, usec, _cap, _len = _RECORD.unpack(head)
        ts = sec * 1_000_000_000 + usec * 1000
        if self.entries:
            self.entries[-1][4] = self._last_clock  # the previous segment's highest time
            assert self.first_ns is not None
            low = max(ts - REORDER_NS, self.first_ns)
        else:
            self.first_ns = low = ts
        self.entries.append([self.packets, offset, ts, low, ts])
        self._next_mark = offset + self.every

    def _index_failed(self, exc: OSError) -> None:
        self._indexing = False
        name = os.path.basename(self.current.path) if self.current else "?"
        log.error("%s: index not kept while writing (%s); the file will be scanned", name, exc)

    def _dedupe(self, hdr: Any, data: Any) -> None:
        ts = hdr.contents.ts
        if self.drop_before_us is not None and ts.tv_sec * 1_000_000 + ts.tv_usec < (
            self.drop_before_us
        ):
            self.skipped += 1
            return
        self._dumper.dump(hdr, data)

    def current_size(self) -> int:
        """Bytes of the open file, including the dumper's buffer."""
        if self.current is None or self._dumper is None:
            return 0
        return int(self._dumper.ftell())

    def close_current(self, drops: int, ifdrops: int, reopen: bool) -> ClosedFile | None:
        if self.current is None:
            return None
        dumper, reader = self._dumper, self._reader
        entries, tail, packets = self.entries, self._tail, self.packets
        end = dumper.ftell()
        last_ns: int | None = None
        if packets and self._indexing and entries:
            try:
                dumper.flush()
                last_ns = _latest(os.pread(reader, end - tail[1], tail[1]))
            except OSError as exc:
                self._index_failed(exc)
            if last_ns is not None:
                # The file's last time bounds every segment (the ring's order, as
                # for its first time); the last segment ends with it.
                entries[-1][4] = last_ns
                for e in entries:
                    e[4] = max(e[2], min(e[4], last_ns))
        self._reader = -1
        closed = super().close_current(drops, ifdrops, reopen)
        os.close(reader)
        if closed is None:
            return None
        if closed.size != end or (packets and last_ns is None):
            # The file is not what the dumper wrote (a write failed): scan it.
            return closed
        return dataclasses.replace(closed, last_ns=last_ns, entries=entries)


def _latest(data: bytes) -> int | None:
    """The latest time of the whole records in ``data`` (None if it holds none)."""
    latest: int | None = None
    pos, end = 0, len(data)
    unpack = _RECORD.unpack_from
    while pos + RECORD_HEADER <= end:
        sec, usec, cap, _len = unpack(data, pos)
        pos += RECORD_HEADER + cap
        if pos > end:
            break
        ts = sec * 1_000_000_000 + usec * 1000
        if latest is None or ts > latest:
            latest = ts
    return latest
