"""Which traces an extraction reads, in what order, and the output's pcap header.

Every input is described once: from its host index when a valid one exists
(no need to touch the trace), otherwise by opening it (header and first
packet). Then:

- a trace whose complete index says it holds no packet in the time window,
  or none of the hosts, nets, ports or protocols the filter requires
  (:func:`bulk.bpfquery.requirements`), is skipped without being read;
- the others are read in order of their earliest time (the index's lowest
  time, or the first packet's), so that a time-ordered merge only needs the
  traces whose time ranges overlap open at once;
- the output header (link type, snaplen, resolution) is computed over ALL
  inputs, skipped or not, so skipping never changes a single output byte.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING

from bulk.archive.members import COMPRESSED_SUFFIXES
from bulk.archive.members import follow as follow_path
from bulk.errors import TraceError, UsageError
from bulk.timespec import TimeWindow

if TYPE_CHECKING:
    from bulk.archive.hostindex import HostIndex
    from bulk.bpfquery import Requirement
    from bulk.trace import Packet

INDEX_SUFFIX = ".idx"  # bulk.archive.hostindex.INDEX_SUFFIX

MAX_SNAPLEN = 262144


class Input:
    """One trace in the scope of an extraction.

    Plain classes here, not dataclasses: start-up is a large part of an
    extraction that the index reduces to a few traces (the dataclasses module
    alone costs about 8 ms).
    """

    def __init__(
        self, *, path: str, format: str, compression: str | None, linktypes: tuple[int, ...],
        snaplen: int, nanosecond: bool, size: int, order_ns: int | None,
        time_ordered: bool = False, index: HostIndex | None = None,
        pending: Iterator[Packet] | None = None,
    ) -> None:  # fmt: skip
        self.path = path
        self.format = format
        self.compression = compression
        self.linktypes = linktypes
        self.snaplen = snaplen
        self.nanosecond = nanosecond
        self.size = size
        self.order_ns = order_ns  # earliest time known (index lowest, or first packet)
        self.time_ordered = time_ordered  # known from the index only
        self.index = index
        self.skip: str | None = None  # why it is not read: "time" or "index"
        # Standard input can be read once only: its packets, first one included.
        self.pending = pending

    def __repr__(self) -> str:
        return f"Input({self.path!r}, {self.format}, skip={self.skip})"

    @property
    def linktype(self) -> int:
        return self.linktypes[0] if self.linktypes else -1


class Plan:
    def __init__(
        self, *, inputs: list[Input], requirement: Requirement | None, linktype: int,
        snaplen: int, nanosecond: bool, to_read: list[Input] | None = None,
    ) -> None:  # fmt: skip
        self.inputs = inputs
        self.requirement = requirement  # what the filter needs; None when no index was found
        self.linktype = linktype
        self.snaplen = snaplen
        self.nanosecond = nanosecond
        self.to_read = to_read if to_read is not None else []

    @property
    def skipped_by_index(self) -> int:
        return sum(1 for i in self.inputs if i.skip == "index")

    @property
    def skipped_by_time(self) -> int:
        return sum(1 for i in self.inputs if i.skip == "time")


def follow(inp: Input) -> Input:
    """The input itself if its file is still there, else the trace it became
    (described again), or :class:`~bulk.errors.Vanished`. An archive changes
    under its readers (bulk.archive.members)."""
    if inp.path == "-" or os.path.exists(inp.path):
        return inp
    return follow_path(inp.path, partial(describe, use_index=False))[0]


def adjust_snaplen(snaplen: int) -> int:
    """What libpcap (1.10) reports as a file's snapshot length: 0 means the maximum."""
    return MAX_SNAPLEN if snaplen <= 0 else snaplen


def describe(path: str, use_index: bool) -> Input:
    """An input, from its index if valid, else from its header and first packet."""
    if path == "-":
        return _describe_stdin()
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise TraceError(path, None, exc.strerror or str(exc)) from None
    index = _load_index(path) if use_index else None
    if index is not None:
        meta = index.meta
        return Input(
            path=path,
            format=str(meta["format"]),
            # Of the file itself: an index written before compression renamed the
            # trace (X.pcap.idx -> X.pcap.zst.idx) still says uncompressed.
            compression=index.trace_compression,
            linktypes=tuple(index.linktypes),
            snaplen=int(meta.get("snaplen") or 0),
            nanosecond=bool(meta.get("nanosecond")),
            size=size,
            order_ns=index.min_ns,
            time_ordered=bool(meta.get("time_ordered")),
            index=index,
        )
    plain = _plain_pcap(path, size)
    if plain is not None:
        return plain
    from bulk.trace import open_trace  # noqa: PLC0415 - only when needed

    with open_trace(path) as reader:
        try:
            first = next(iter(reader), None)
        except TraceError:
            first = None  # damaged from the first record: reading reports it
        return Input(
            path=path,
            format=reader.format,
            compression=reader.compression,
            linktypes=tuple(reader.linktypes),
            snaplen=reader.snaplen,
            nanosecond=reader.nanosecond,
            size=size,
            order_ns=first.ts_ns if first is not None else None,
        )


def _plain_pcap(path: str, size: int) -> Input | None:
    """An uncompressed pcap described from its first 40 bytes (file header and the
    first record header), without the trace layer; None for anything else."""
    from bulk.slicing.pcapfile import parse_pcap_header  # noqa: PLC0415

    try:
        with open(path, "rb") as f:
            head = f.read(40)
    except OSError as exc:
        raise TraceError(path, None, exc.strerror or str(exc)) from None
    fmt = parse_pcap_header(head)
    if fmt is None:
        return None
    first = None
    if len(head) == 40:
        sec, frac = struct.unpack_from(fmt.endian + "II", head, 24)
        first = sec * 1_000_000_000 + frac * (1 if fmt.nanosecond else 1000)
    return Input(
        path=path,
        format="pcap",
        compression=None,
        linktypes=(fmt.linktype,),
        snaplen=fmt.snaplen,
        nanosecond=fmt.nanosecond,
        size=size,
        order_ns=first,
    )


def _load_index(path: str) -> HostIndex | None:
    """The host index, importing its module only when a side file is there."""
    base = path
    for suffix in COMPRESSED_SUFFIXES:
        if path.endswith(suffix):
            base = path[: -len(suffix)]
    if not (os.path.exists(path + INDEX_SUFFIX) or os.path.exists(base + INDEX_SUFFIX)):
        return None
    from bulk.archive.hostindex import load_index_for  # noqa: PLC0415

    return load_index_for(path)


def _describe_stdin() -> Input:
    from bulk.trace import open_trace  # noqa: PLC0415

    reader = open_trace("-")
    packets = iter(reader)
    try:
        first = next(packets, None)
    except TraceError:
        first = None
    pending = packets if first is None else itertools.chain((first,), packets)
    return Input(
        path="-",
        format=reader.format,
        compression=reader.compression,
        linktypes=tuple(reader.linktypes),
        snaplen=reader.snaplen,
        nanosecond=reader.nanosecond,
        size=0,
        order_ns=first.ts_ns if first is not None else None,
        pending=pending,
    )


def _outside(index: HostIndex, window: TimeWindow) -> bool:
    lo, hi = index.min_ns, index.max_ns
    if lo is None or hi is None:
        return index.packets == 0
    if window.start_ns is not None and hi < window.start_ns:
        return True
    return window.end_ns is not None and lo > window.end_ns


def make_plan(
    paths: Sequence[str],
    expression: str,
    window: TimeWindow,
    use_index: bool = True,
    inputs: Sequence[Input] | None = None,
) -> Plan:
    """Describe every input, decide what to skip, and fix the output header.

    ``inputs`` may be given already described (the command describes them
    first to resolve relative times against the first packet).
    """
    described = list(inputs) if inputs is not None else [describe(p, use_index) for p in paths]
    req: Requirement | None = None  # None: nothing to skip with (no index)
    if use_index and any(i.index is not None for i in described):
        from bulk.bpfquery import requirements  # noqa: PLC0415

        req = requirements(expression)
    linktype = -1
    first_path = ""
    for inp in described:
        for lt in inp.linktypes:
            if linktype == -1:
                linktype, first_path = lt, inp.path
            elif lt != linktype:
                from bulk.trace import linktype_name  # noqa: PLC0415

                raise UsageError(
                    f"{inp.path} has link type {linktype_name(lt)} ({lt}) but {first_path} has "
                    f"{linktype_name(linktype)} ({linktype}); a pcap holds one link type: "
                    "extract from them separately"
                )
    snaplen = max((adjust_snaplen(i.snaplen) for i in described), default=MAX_SNAPLEN)
    nanosecond = any(i.nanosecond for i in described)
    for inp in described:
        inp.skip = None
        ix = inp.index
        if ix is None or not ix.complete:
            continue
        if _outside(ix, window):
            inp.skip = "time"
        elif req is not None and not req.holds(ix):
            inp.skip = "index"
    to_read = [i for i in described if i.skip is None]
    # Earliest first; unknown times (empty or damaged files) first, they cost nothing.
    to_read.sort(key=lambda i: -1 if i.order_ns is None else i.order_ns)
    return Plan(
        inputs=described,
        requirement=req,
        linktype=linktype if linktype != -1 else 1,
        snaplen=snaplen,
        nanosecond=nanosecond,
        to_read=to_read,
    )
