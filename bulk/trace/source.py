"""Packet sources: one or many traces, merged in time order, windowed and filtered."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

from bulk.errors import TraceError, Vanished
from bulk.trace.bpf import BpfFilter
from bulk.trace.packet import Packet
from bulk.trace.reader import TraceReader, open_trace

T = TypeVar("T")


class Opener(Protocol):
    """How a reader opens an input path: ``opener(path, open_one)`` returns what
    ``open_one`` makes of it. :func:`open_direct` opens the path as named; an
    archive's reader follows a trace that moved since it was listed and raises
    :class:`~bulk.errors.Vanished` for one deleted
    (:meth:`bulk.archive.members.Members.open`)."""

    def __call__(self, path: str, open_one: Callable[[str], T], /) -> T: ...


def open_direct(path: str, open_one: Callable[[str], T], /) -> T:
    """The path as named."""
    return open_one(path)


def open_all(paths: Iterable[str], opener: Opener = open_direct) -> list[TraceReader]:
    """Open every trace, so that a file that is not a trace fails before any output.

    A trace the ``opener`` reports as :class:`~bulk.errors.Vanished` is left out.
    """
    readers: list[TraceReader] = []
    try:
        for path in paths:
            try:
                readers.append(opener(path, open_trace))
            except Vanished:
                continue
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return readers


def drain(reader: TraceReader, errors: list[TraceError]) -> Iterator[Packet]:
    """Every whole packet of one open trace; a read error is recorded, not raised."""
    with reader:
        try:
            yield from reader
        except TraceError as exc:
            errors.append(exc)


def merge_readers(readers: list[TraceReader], errors: list[TraceError]) -> Iterator[Packet]:
    """Packets of several open traces in time order (stable for equal times)."""
    streams = [drain(r, errors) for r in readers]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=_ts)


def iter_packets(
    paths: Iterable[str],
    start_ns: int | None = None,
    end_ns: int | None = None,
    bpf: str | None = None,
    opener: Opener = open_direct,
) -> Iterator[Packet]:
    """Packets of ``paths`` merged in time order, within [start_ns, end_ns), filtered.

    Every readable packet of every trace is delivered first; if a trace was
    truncated or corrupt part way, the first such error is raised at the end,
    so a caller writes all it can and then reports one line. A file that is
    not a trace at all, or a filter libpcap rejects, raises at the first
    ``next()``, before any packet is delivered. Traces are opened by ``opener``
    (see :func:`open_all`).
    """
    readers = open_all(paths, opener)
    errors: list[TraceError] = []
    flt = BpfFilter(bpf) if bpf else None
    if flt is not None and readers and readers[0].linktype >= 0:
        try:
            flt.program(readers[0].linktype)  # a bad filter fails before any output
        except BaseException:
            for reader in readers:
                reader.close()
            raise
    for pkt in merge_readers(readers, errors):
        ts = pkt.ts_ns
        if start_ns is not None and ts < start_ns:
            continue
        if end_ns is not None and ts >= end_ns:
            continue
        if flt is not None and not flt.match(pkt.linktype, pkt.data):
            continue
        yield pkt
    if errors:
        raise errors[0]


def _ts(pkt: Packet) -> int:
    return pkt.ts_ns
