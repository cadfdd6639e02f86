"""The input traces of a reading command (files as given, then archive
directories) and the packet-time window they are read in.

Not a command itself (see COMMANDS). Light on purpose: ``bulk slice`` of a
plain pcap imports this and must not load the archive package.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bulk.errors import TraceError, UsageError, Vanished

if TYPE_CHECKING:
    from bulk.trace.source import Opener


def gather_inputs(
    files: list[str], dirs: list[str], *, include_open: bool, how: str
) -> tuple[list[str], set[str]]:
    """Every input path (``files``, then the traces of each directory in ``dirs``)
    and the set of those listed from a directory (an archive, whose traces may
    move or go while they are read). UsageError when there is none (``how``
    says how to give some), when standard input is named twice, or when a
    directory is named as a file."""
    paths = list(files)
    listed: set[str] = set()
    if dirs:
        from bulk.archive.listing import traces_in_dir  # noqa: PLC0415 - archives only

        for directory in dirs:
            found = traces_in_dir(directory, include_open=include_open)
            paths.extend(found)
            listed.update(found)
    if not paths:
        if dirs:
            raise UsageError("no trace files in " + ", ".join(dirs))
        raise UsageError(f"no input: {how}")
    if paths.count("-") > 1:
        raise UsageError("standard input can be given only once")
    for p in paths:
        if p != "-" and os.path.isdir(p):
            raise UsageError(f"{p} is a directory: use --dir {p}")
    return paths, listed


def first_packet_ns(paths: list[str], opener: Opener) -> int | None:
    """The earliest first-packet time of the inputs (the reference of relative
    times); an input that cannot be read is left to the reading to report."""
    from bulk.trace import open_trace  # noqa: PLC0415 - not on a plain slice's path

    if "-" in paths:
        raise UsageError("a relative --start/--end needs file inputs, not standard input")
    first: int | None = None
    for path in paths:
        try:
            reader = opener(path, open_trace)
        except Vanished:
            continue
        with reader:
            try:
                pkt = next(iter(reader), None)
            except TraceError:
                pkt = None
        if pkt is not None and (first is None or pkt.ts_ns < first):
            first = pkt.ts_ns
    return first


def packet_window(
    start: str | None, end: str | None, paths: list[str], opener: Opener
) -> tuple[int | None, int | None]:
    """``--start``/``--end`` as the packet-time bounds ``[start, end)`` that
    iter_packets takes (None: unbounded). Both ends are inclusive as given
    (tcpslice's rule, see resolve_window); a relative time counts from the
    earliest first packet of the inputs."""
    if start is None and end is None:
        return None, None
    from bulk.timespec import needs_reference, resolve_window  # noqa: PLC0415

    specs = [s for s in (start, end) if s is not None]
    ref = first_packet_ns(paths, opener) if any(needs_reference(s) for s in specs) else None
    window = resolve_window(start, end, ref)
    start_ns = window.start_ns if start is not None else None
    end_ns = window.end_ns + 1 if window.end_ns is not None else None
    return start_ns, end_ns
