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

from bulk.errors import ArchiveError
from bulk.slicing import slicer
from bulk.slicing.sources import Source, open_source
from bulk.timespec import TimeWindow


@dataclass(frozen=True)
class Candidate:
    """A trace of the archive with its time range (None: unknown until opened)."""

    path: str
    first_ns: int | None
    last_ns: int | None
    empty: bool = False


def catalogued(directory: str, paths: Sequence[str]) -> list[Candidate] | None:
    """Time ranges of ``paths`` (files of ``directory``) from its catalogue, or
    None without a usable catalogue."""
    from bulk.archive.catalogue import Catalogue, catalogue_path  # noqa: PLC0415

    if not os.path.exists(catalogue_path(directory)):
        return None
    try:
        with Catalogue.open(directory, create=False) as cat:
            records = {cat.path_of(r): r for r in cat.files()}
    except ArchiveError:
        return None
    out = []
    for path in paths:
        rec = records.get(path)
        if rec is None or rec.state == "open" or rec.first_ns is None or rec.last_ns is None:
            out.append(Candidate(path, None, None, empty=False))
        else:
            out.append(Candidate(path, rec.first_ns, rec.last_ns, empty=rec.packets == 0))
    return out


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
            sources.append(open_source(c.path))
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
