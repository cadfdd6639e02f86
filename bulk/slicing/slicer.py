"""Slice a time window out of one or many traces, as tcpslice does.

1. Every input is opened as a :class:`~bulk.slicing.sources.Source` (first
   and last packet times from a few reads, or from the catalogue).
2. The window is resolved against the earliest first packet (tcpslice's
   "first time"); the default end is the latest last packet.
3. Files whose [first, last] overlaps the window are kept; their link types
   must agree (a pcap holds one).
4. Kept files are grouped into clusters of overlapping time ranges. A cluster
   of one seekable file in the output's format is copied as one byte range;
   a cluster of several is merged in time order (ties in input order, as
   tcpslice), dropping a packet identical (time, lengths, bytes) to one
   already written from another file at the same time, unless asked not to.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import BinaryIO, NamedTuple

from bulk.errors import TraceError, UsageError
from bulk.slicing.output import SliceSink, make_format
from bulk.slicing.pcapfile import MAX_SNAPLEN, PcapFormat
from bulk.slicing.sources import IndexedSource, SeekablePcap, Source, Window, open_source
from bulk.timespec import TimeWindow, resolve_window


class SliceOptions(NamedTuple):
    keep_duplicates: bool = False
    scan_all: bool = False  # read every packet of every kept file (unordered files)


DEFAULT_OPTIONS = SliceOptions()


class SliceReport:
    """What a slice did, for ``--stats`` and for tests."""

    def __init__(self, window: TimeWindow, files: int = 0) -> None:
        self.window = window
        self.files = files
        self.files_used: list[str] = []
        self.packets_merged = 0
        self.duplicates = 0
        self.ranges_copied = 0
        self.bytes_copied = 0
        self.bytes_read = 0
        self.input_bytes = 0
        self.warnings: list[str] = []


def open_sources(paths: Sequence[str]) -> list[Source]:
    """Open every input (errors before any output); the caller closes them."""
    sources: list[Source] = []
    try:
        for path in paths:
            sources.append(open_source(path))
    except BaseException:
        close_all(sources)
        raise
    return sources


def close_all(sources: Sequence[Source]) -> None:
    for s in sources:
        s.close()


def first_time(sources: Sequence[Source]) -> int | None:
    firsts = [s.first_ns for s in sources if s.first_ns is not None]
    return min(firsts) if firsts else None


def last_time(sources: Sequence[Source]) -> int | None:
    """The latest last packet, or None if some file's last time is unknown."""
    lasts = []
    for s in sources:
        if s.first_ns is None:
            continue
        if s.last_ns is None:
            return None
        lasts.append(s.last_ns)
    return max(lasts) if lasts else None


def resolve(
    sources: Sequence[Source], start: str | None, end: str | None, now_ns: int | None = None
) -> TimeWindow:
    return resolve_window(start, end, first_time(sources), last_time(sources), now_ns=now_ns)


def overlapping(
    sources: Sequence[Source], window: TimeWindow, assume_order: bool = True
) -> list[Source]:
    """The sources with packets possibly inside the window, in input order.

    The first and last packets bound a file's times only if it is in time
    order; without ``assume_order`` (``--scan``) only empty files are left out.
    """
    out = []
    for s in sources:
        if s.first_ns is None or window.empty:
            continue
        if not assume_order:
            out.append(s)
            continue
        if window.end_ns is not None and s.first_ns > window.end_ns:
            continue
        if window.start_ns is not None and s.last_ns is not None and s.last_ns < window.start_ns:
            continue
        out.append(s)
    return out


def check_linktypes(sources: Sequence[Source]) -> None:
    seen: dict[int, str] = {}
    for s in sources:
        for lt in s.linktypes:
            seen.setdefault(lt, s.path)
    if len(seen) > 1:
        from bulk.trace.packet import linktype_name  # noqa: PLC0415 - error path only

        parts = ", ".join(f"{path} is {linktype_name(lt)} ({lt})" for lt, path in seen.items())
        raise UsageError(
            f"cannot slice traces of different link types into one pcap: {parts}; "
            "slice them separately"
        )


def output_format(sources: Sequence[Source], fallback_linktype: int = 1) -> PcapFormat:
    """The output's format: the inputs' own when they agree, else little-endian
    pcap, nanosecond if any input is (so no timestamp loses digits)."""
    snaplen = max([s.snaplen for s in sources if s.snaplen] or [MAX_SNAPLEN])
    fmts = [s.fmt for s in sources]
    if sources and all(f is not None for f in fmts):
        first = fmts[0]
        assert first is not None
        if all(f is not None and f.compatible(first) for f in fmts):
            return make_format(first.endian, first.nanosecond, snaplen, first.linktype)
    linktype = sources[0].linktype if sources else fallback_linktype
    nano = any(s.nanosecond for s in sources)
    return make_format("<", nano, snaplen, linktype)


def clusters(sources: Sequence[Source]) -> list[list[Source]]:
    """Group sources whose time ranges overlap (or touch); each cluster in input order."""
    order = sorted(range(len(sources)), key=lambda i: (sources[i].first_ns or 0, i))
    groups: list[list[int]] = []
    reach: int | None = None  # latest last time of the current group; None = unknown
    for i in order:
        s = sources[i]
        first = s.first_ns or 0
        if groups and (reach is None or first <= reach):
            groups[-1].append(i)
            reach = None if reach is None or s.last_ns is None else max(reach, s.last_ns)
        else:
            groups.append([i])
            reach = s.last_ns
    return [[sources[i] for i in sorted(g)] for g in groups]


def write_slice(
    sources: Sequence[Source],
    window: TimeWindow,
    out: BinaryIO,
    options: SliceOptions = DEFAULT_OPTIONS,
) -> SliceReport:
    """Write the packets of ``sources`` inside ``window`` as one pcap to ``out``."""
    report = SliceReport(window, files=len(sources))
    kept = overlapping(sources, window, assume_order=not options.scan_all)
    check_linktypes(kept)
    fmt = output_format(kept or list(sources[:1]))
    sink = SliceSink(out, fmt)
    win = Window(window.start_ns, window.end_ns)
    report.files_used = [s.path for s in kept]
    # Without time order, first/last packets do not bound a file: merge them all.
    groups = [kept] if options.scan_all and kept else clusters(kept)
    for group in groups:
        only = group[0]
        if (
            len(group) == 1
            and isinstance(only, SeekablePcap)
            and not options.scan_all
            and only.fmt is not None
            and only.fmt.compatible(fmt)
        ):
            if only.segments is not None:
                for piece in only.pieces(win):
                    if isinstance(piece, tuple):
                        sink.copy_range(only, piece[0], piece[1])
                        report.bytes_copied += piece[1] - piece[0]
                    else:
                        sink.write_raw(piece)
                        report.bytes_copied += len(piece)
            else:
                a, b = only.byte_range(win)
                sink.copy_range(only, a, b)
                report.bytes_copied += b - a
            report.ranges_copied += 1
            continue
        if (
            len(group) == 1
            and isinstance(only, IndexedSource)
            and only.fmt is not None
            and only.fmt.compatible(fmt)
        ):
            for frame_piece in only.raw_pieces(win):
                sink.write_raw(frame_piece)
                report.bytes_copied += len(frame_piece)
            report.ranges_copied += 1
            continue
        before = sink.packets
        dropped = _merge_into(sink, group, win, options)
        report.duplicates += dropped
        report.packets_merged += sink.packets - before
    sink.close()
    errors: list[TraceError] = []
    for s in sources:
        report.bytes_read += s.bytes_read
        if s.backwards:
            report.warnings.append(
                f"{s.path} is not in time order ({s.backwards} packets go back in time): "
                "packets before the window's position may be missing; use --scan"
            )
        err = getattr(s, "error", None)
        if isinstance(err, TraceError):
            errors.append(err)
    if errors:
        raise errors[0]
    return report


def _merge_into(
    sink: SliceSink, group: Sequence[Source], win: Window, options: SliceOptions
) -> int:
    """Merge a cluster in time order into the sink; return duplicates dropped."""
    if len(group) == 1:
        for ts, wirelen, data in group[0].records(win, options.scan_all):
            sink.write_record(ts, wirelen, data)
        return 0
    streams = [_tagged(s.records(win, options.scan_all), i) for i, s in enumerate(group)]
    merged = heapq.merge(*streams)
    if options.keep_duplicates:
        for ts, _i, wirelen, data in merged:
            sink.write_record(ts, wirelen, data)
        return 0
    dropped = 0
    current = -1
    seen: dict[tuple[int, bytes], set[int]] = {}
    for ts, i, wirelen, data in merged:
        if ts != current:
            current = ts
            seen = {}
        key = (wirelen, data)
        owners = seen.get(key)
        if owners is None:
            seen[key] = {i}
        elif owners - {i}:
            dropped += 1
            continue
        else:
            owners.add(i)
        sink.write_record(ts, wirelen, data)
    return dropped


def _tagged(
    records: Iterator[tuple[int, int, bytes]], index: int
) -> Iterator[tuple[int, int, int, bytes]]:
    for ts, wirelen, data in records:
        yield ts, index, wirelen, data
