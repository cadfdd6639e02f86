"""Write the matching packets of a plan, merged in time order, as one pcap.

Traces whose time ranges do not overlap (one trace; a rotated archive, known
from the host indexes) are written one after the other. An uncompressed
microsecond trace that lies wholly in the time window is then read, filtered
and written by libpcap alone (:mod:`bulk.extraction.native`, no Python per
packet), the others packet by packet as below.

One trace read directly by libpcap with a time window is copied by a tight
loop (one Python iteration per MATCHING packet, the filter runs in C). Several
overlapping traces are
merged lazily: a trace is opened only when the merge reaches its earliest
time, so a rotated archive has one or two traces open at a time while
overlapping ones (capture workers) are merged packet by packet. Ties keep the
order of the traces' earliest times, then the order given.

A trace that is truncated or damaged part way delivers every packet before
the damage; the errors are collected in the report, the others go on.
"""

from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

import pcapy

from bulk.errors import TraceError, Vanished
from bulk.extraction.plan import Input, Plan, follow
from bulk.extraction.progress import Progress
from bulk.extraction.sources import (
    NS,
    U32,
    Counters,
    Match,
    matches,
    method_for,
    open_direct,
    pcap_error,
)
from bulk.slicing.pcapfile import PCAP_MAGIC_NS, PCAP_MAGIC_US
from bulk.timespec import TimeWindow

_RECORD = struct.Struct("<IIII")
_HEADER = struct.Struct("<IHHiIII")
_TICK = 0x3FF


class ExtractReport:
    """What a run did (packets and bytes are -1 when libpcap's dumper wrote them)."""

    def __init__(
        self, files: int = 0, files_read: int = 0, skipped_by_index: int = 0,
        skipped_by_time: int = 0,
    ) -> None:  # fmt: skip
        self.files = files
        self.files_read = files_read
        self.skipped_by_index = skipped_by_index
        self.skipped_by_time = skipped_by_time
        self.packets = 0
        self.bytes = 0
        self.methods: dict[str, int] = {}
        self.errors: list[TraceError] = []


def _guarded(stream: Iterator[Match], errors: list[TraceError]) -> Iterator[Match]:
    try:
        yield from stream
    except TraceError as exc:
        errors.append(exc)


def merged(
    inputs: list[Input],
    expression: str,
    window: TimeWindow,
    counters: Counters,
    errors: list[TraceError],
    *,
    out_nano: bool = False,
) -> Iterator[Match]:
    """Matching packets of ``inputs`` (sorted by earliest time) in time order."""
    heap: list[tuple[int, int, Match, Iterator[Match]]] = []
    opened = 0
    n = len(inputs)
    try:
        while True:
            while opened < n and (not heap or (inputs[opened].order_ns or -1) <= heap[0][0]):
                it = _guarded(
                    matches(inputs[opened], expression, window, counters, out_nano), errors
                )
                first = next(it, None)
                if first is not None:
                    heapq.heappush(heap, (first[0], opened, first, it))
                opened += 1
            if not heap:
                return
            _ts, idx, m, it = heap[0]
            yield m
            nxt = next(it, None)
            if nxt is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (nxt[0], idx, nxt, it))
    finally:
        for _ts, _idx, _m, it in heap:
            it.close()  # type: ignore[attr-defined]


def _copy_direct(
    inp: Input, expression: str, window: TimeWindow, *, nanosecond: bool, out: BinaryIO,
    report: ExtractReport, progress: Progress,
) -> None:  # fmt: skip
    """The fast path: one uncompressed microsecond trace, libpcap filtering in C."""
    handle = open_direct(inp, expression)
    w = out.write
    pack = _RECORD.pack
    scale = 1000 if nanosecond else 1
    start, end = window.start_ns, window.end_ns
    windowed = start is not None or end is not None
    stop_early = inp.time_ordered and end is not None
    packets = nbytes = 0
    nxt = handle.next
    try:
        while True:
            try:
                hdr, data = nxt()
            except pcapy.PcapError as exc:
                report.errors.append(pcap_error(inp.path, exc))
                break
            if hdr is None:
                break
            sec, usec = hdr.getts()
            sec &= U32
            usec &= U32  # libpcap 1.9 keeps the fraction as a signed 32-bit value
            if windowed:
                ts = sec * NS + usec * 1000
                if start is not None and ts < start:
                    continue
                if end is not None and ts > end:
                    if stop_early:
                        break
                    continue
            n = len(data)
            w(pack(sec, (usec * scale) & U32, n, hdr.getlen()))
            w(data)
            packets += 1
            nbytes += n
            if not packets & _TICK:
                progress.update(0, 0, packets)
    finally:
        handle.close()
    report.packets += packets
    report.bytes += nbytes


def pcap_header(plan: Plan) -> bytes:
    """The output's pcap file header (little endian, version 2.4, zone 0)."""
    magic = PCAP_MAGIC_NS if plan.nanosecond else PCAP_MAGIC_US
    return _HEADER.pack(magic, 2, 4, 0, 0, plan.snaplen, plan.linktype)


def _ranges_in_order(plan: Plan) -> bool:
    """True if writing the traces one after the other gives the merge's order:
    each holds no packet earlier than the latest of the traces before it (ties
    go to the trace first in the plan's order, as in the merge). Known from
    complete host indexes only, unless there is just one trace."""
    if len(plan.to_read) <= 1:
        return True
    latest: int | None = None
    for inp in plan.to_read:
        ix = inp.index
        if ix is None or not ix.complete:
            return False
        lo, hi = ix.min_ns, ix.max_ns
        if lo is None or hi is None:
            if ix.packets:
                return False
            continue  # an empty trace
        if latest is not None and lo < latest:
            return False
        latest = hi
    return True


def _whole(inp: Input, window: TimeWindow) -> bool:
    """Every packet of the trace is in the window (no window: all are)."""
    start, end = window.start_ns, window.end_ns
    if start is None and end is None:
        return True
    ix = inp.index
    if ix is None or not ix.complete:
        return False
    lo, hi = ix.min_ns, ix.max_ns
    if lo is None or hi is None:
        return ix.packets == 0
    return (start is None or lo >= start) and (end is None or hi <= end)


def _write_in_order(
    plan: Plan, expression: str, window: TimeWindow, out: BinaryIO, *, target: str,
    report: ExtractReport, progress: Progress,
) -> bool:  # fmt: skip
    """Write the traces one after the other, libpcap's dumper writing the header
    and the packets of every uncompressed trace wholly in the window. False,
    with nothing written, if libpcap's dumper cannot be used."""
    from bulk.extraction.native import Dumper  # noqa: PLC0415

    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    out.flush()
    dumper = Dumper.open(fd, plan.linktype, plan.snaplen, pcap_header(plan), target)
    if dumper is None:
        return False
    files_done = bytes_done = 0

    def tick(read: int) -> None:
        progress.update(files_done, bytes_done + read, None)

    try:
        for planned in plan.to_read:
            try:
                inp = follow(planned)
            except Vanished as exc:
                report.errors.append(exc)
                continue
            by_libpcap = method_for(inp) == "direct" and _whole(inp, window)
            if by_libpcap:
                message = dumper.copy(inp.path, expression, tick)
                if message is not None:
                    if os.path.exists(inp.path):
                        report.errors.append(pcap_error(inp.path, message))
                    else:
                        by_libpcap = False  # renamed or deleted since: followed below
            if not by_libpcap:
                dumper.flush()
                _write_matches(inp, expression, window, out, report)
                out.flush()
            files_done += 1
            bytes_done += planned.size
            progress.update(files_done, bytes_done, None)
    finally:
        dumper.close()
    report.packets = report.bytes = -1  # written by libpcap, not counted
    return True


def _write_matches(
    inp: Input, expression: str, window: TimeWindow, out: BinaryIO, report: ExtractReport
) -> None:
    """One trace's matching packets in the window, written by Python (microsecond output)."""
    w = out.write
    pack = _RECORD.pack
    for _ts, sec, frac, wirelen, data in _guarded(matches(inp, expression, window), report.errors):
        w(pack(sec, frac, len(data), wirelen))
        w(data)


def write_plan(
    plan: Plan,
    expression: str,
    window: TimeWindow,
    out: BinaryIO,
    progress: Progress | None = None,
    *,
    target: str = "standard output",
) -> ExtractReport:
    """Write the pcap header and every matching packet of the plan to ``out``
    (``target`` names it in a write error)."""
    report = ExtractReport(
        files=len(plan.inputs),
        files_read=len(plan.to_read),
        skipped_by_index=plan.skipped_by_index,
        skipped_by_time=plan.skipped_by_time,
    )
    for inp in plan.to_read:
        m = method_for(inp)
        report.methods[m] = report.methods.get(m, 0) + 1
    if progress is None:
        progress = Progress(len(plan.to_read), sum(i.size for i in plan.to_read))
    if len(plan.to_read) == 1:
        try:
            plan.to_read[0] = follow(plan.to_read[0])
        except Vanished as exc:
            report.errors.append(exc)
            plan.to_read = []
    single = len(plan.to_read) == 1 and method_for(plan.to_read[0]) == "direct"
    in_order = (
        not plan.nanosecond
        and _ranges_in_order(plan)
        and any(method_for(i) == "direct" and _whole(i, window) for i in plan.to_read)
    )
    if in_order:
        try:
            if _write_in_order(
                plan, expression, window, out, target=target, report=report, progress=progress
            ):
                return report
        finally:
            progress.close()
            out.flush()
    out.write(pcap_header(plan))
    try:
        if single:
            _copy_direct(
                plan.to_read[0], expression, window,
                nanosecond=plan.nanosecond, out=out, report=report, progress=progress,
            )  # fmt: skip
        elif plan.to_read:
            _copy_merged(plan, expression, window, out=out, report=report, progress=progress)
    finally:
        progress.close()
        out.flush()
    return report


def _copy_merged(
    plan: Plan, expression: str, window: TimeWindow, *, out: BinaryIO,
    report: ExtractReport, progress: Progress,
) -> None:  # fmt: skip
    counters = Counters()
    w = out.write
    pack = _RECORD.pack
    nano = plan.nanosecond
    packets = nbytes = 0
    stream = merged(plan.to_read, expression, window, counters, report.errors, out_nano=nano)
    for _ts, sec, frac, wirelen, data in stream:
        n = len(data)
        w(pack(sec, frac, n, wirelen))
        w(data)
        packets += 1
        nbytes += n
        if not packets & _TICK:
            progress.update(counters.files_done, counters.bytes_done, packets)
    progress.update(counters.files_done, counters.bytes_done, packets, force=True)
    report.packets += packets
    report.bytes += nbytes
