"""Slicing a whole archive directory: the catalogue chooses the files.

Without a catalogue every trace of the directory is opened (head and tail,
or its frame index) to learn its time range. With one
(:mod:`bulk.archive.catalogue`), the ranges come from it, so only the files
that can hold packets of the window are opened; a file the catalogue does not
know (or knows without times, such as the file being captured) is opened to
learn its range. The catalogue is never required and never written here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bulk.errors import ArchiveError
from bulk.slicing import slicer
from bulk.slicing.sources import SeekablePcap, Segment, Source, open_source
from bulk.timespec import TimeWindow

if TYPE_CHECKING:
    from bulk.archive.scan import IndexEntry


@dataclass(frozen=True)
class Candidate:
    """A trace of the archive with its time range (None: unknown until opened)
    and, for an indexed uncompressed file, its time index as segments."""

    path: str
    first_ns: int | None
    last_ns: int | None
    empty: bool = False
    segments: tuple[Segment, ...] = ()


def catalogued(directory: str, paths: Sequence[str]) -> list[Candidate] | None:
    """Time ranges of ``paths`` (files of ``directory``) from its catalogue, or
    None without a usable catalogue."""
    from bulk.archive.catalogue import Catalogue, catalogue_path  # noqa: PLC0415

    if not os.path.exists(catalogue_path(directory)):
        return None
    out = []
    try:
        with Catalogue.open(directory, create=False) as cat:
            records = {cat.path_of(r): r for r in cat.files()}
            for path in paths:
                rec = records.get(path)
                if rec is None or rec.state == "open" or rec.first_ns is None:
                    out.append(Candidate(path, None, None))
                    continue
                if rec.last_ns is None:
                    out.append(Candidate(path, None, None))
                    continue
                segments: tuple[Segment, ...] = ()
                if rec.indexed and rec.compression is None and rec.size == _size(path):
                    segments = _segments(cat.time_index(rec.name), rec.raw_size)
                out.append(Candidate(path, rec.first_ns, rec.last_ns, rec.packets == 0, segments))
    except ArchiveError:
        return None
    return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _segments(entries: Sequence[IndexEntry], end: int | None) -> tuple[Segment, ...]:
    """The catalogue's sparse time index as consecutive byte segments."""
    if not entries or end is None:
        return ()
    out = []
    for i, e in enumerate(entries):
        stop = entries[i + 1].offset if i + 1 < len(entries) else end
        out.append(Segment(e.offset, stop, e.min_ns, e.max_ns))
    return tuple(out)


def plan_archive(
    candidates: Sequence[Candidate],
    start: str | None,
    end: str | None,
    now_ns: int | None = None,
) -> tuple[TimeWindow, list[Source], int]:
    """Resolve the window over every candidate and open only the files it needs.

    Returns the window, the opened sources (in candidate order) and how many
    candidates were left unopened.
    """
    unknown = [c for c in candidates if c.first_ns is None and not c.empty]
    opened: dict[str, Source] = {}
    sources: list[Source] = []
    try:
        for c in unknown:
            opened[c.path] = open_source(c.path)
        firsts = [c.first_ns for c in candidates if c.first_ns is not None]
        lasts = [c.last_ns for c in candidates if c.last_ns is not None]
        for s in opened.values():
            if s.first_ns is not None:
                firsts.append(s.first_ns)
            if s.last_ns is not None:
                lasts.append(s.last_ns)
        unbounded = any(s.first_ns is not None and s.last_ns is None for s in opened.values())
        from bulk.timespec import resolve_window  # noqa: PLC0415

        window = resolve_window(
            start,
            end,
            min(firsts) if firsts else None,
            None if unbounded or not lasts else max(lasts),
            now_ns=now_ns,
        )
        skipped = 0
        for c in candidates:
            if c.path in opened:
                sources.append(opened.pop(c.path))
                continue
            if c.empty or not _meets(c, window):
                skipped += 1
                continue
            source = open_source(c.path)
            sources.append(source)
            if c.segments and isinstance(source, SeekablePcap):
                source.use_segments(list(c.segments))
    except BaseException:
        slicer.close_all([*opened.values(), *sources])
        raise
    slicer.close_all(list(opened.values()))
    return window, sources, skipped


def _meets(c: Candidate, window: TimeWindow) -> bool:
    if window.empty or c.first_ns is None or c.last_ns is None:
        return not window.empty
    if window.end_ns is not None and c.first_ns > window.end_ns:
        return False
    return window.start_ns is None or c.last_ns >= window.start_ns
