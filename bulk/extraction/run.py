"""Write the matching packets of a plan, merged in time order, as one pcap.

One trace read directly by libpcap is copied by a tight loop (one Python
iteration per MATCHING packet, the filter runs in C). Several traces are
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
from dataclasses import dataclass, field
from typing import Any, BinaryIO

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
from bulk.timespec import TimeWindow

_RECORD = struct.Struct("<IIII")
_TICK = 0x3FF


@dataclass
class ExtractReport:
    files: int = 0
    files_read: int = 0
    skipped_by_index: int = 0
    skipped_by_time: int = 0
    packets: int = 0
    bytes: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    errors: list[TraceError] = field(default_factory=list)


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


def _libpcap_header(handle: Any) -> bytes:
    """The pcap file header libpcap's own dumper would write for ``handle``."""
    fd = os.memfd_create("bulk-extract-header")
    try:
        dumper = handle.dump_open(f"/proc/self/fd/{fd}")
        dumper.close()
        return os.pread(fd, 24, 0)
    finally:
        os.close(fd)


def _is_header(raw: bytes, plan: Plan) -> bool:
    """``raw`` is the header the plan's output must start with (little-endian
    microsecond pcap, version 2.4, zone 0, the plan's snaplen and link type)."""
    return len(raw) == 24 and struct.unpack("<IHHiIII", raw) == (
        0xA1B2C3D4, 2, 4, 0, 0, plan.snaplen, plan.linktype
    )  # fmt: skip


def _dump_direct(inp: Input, expression: str, plan: Plan, out: BinaryIO) -> bool:
    """Whole trace, no window: libpcap reads, filters AND writes (``loop`` + its dumper),
    as tcpdump does, when its header is the one we must write. False if not possible.

    The dumper opens ``/proc/self/fd/N`` of our output (a file or a pipe), to which
    nothing has been written yet.
    """
    try:
        fd = out.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    handle = open_direct(inp, expression)
    try:
        if plan.nanosecond or not _is_header(_libpcap_header(handle), plan):
            return False
        dumper = handle.dump_open(f"/proc/self/fd/{fd}")
        try:
            handle.loop(0, dumper.dump)
        finally:
            dumper.close()
    finally:
        handle.close()
    return True


def write_plan(
    plan: Plan,
    expression: str,
    window: TimeWindow,
    out: BinaryIO,
    progress: Progress | None = None,
) -> ExtractReport:
    """Write the pcap header and every matching packet of the plan to ``out``."""
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
    if single and window.start_ns is None and window.end_ns is None:
        try:
            if _dump_direct(plan.to_read[0], expression, plan, out):
                report.packets = report.bytes = -1  # written by libpcap, not counted
                return report
        except pcapy.PcapError as exc:  # cut short: the dumper kept every whole packet
            report.errors.append(pcap_error(plan.to_read[0].path, exc))
            report.packets = report.bytes = -1
            return report
    from bulk.trace import pcap_header  # noqa: PLC0415

    out.write(pcap_header(plan.linktype, plan.snaplen, plan.nanosecond))
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
