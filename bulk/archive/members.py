"""Traces found by listing an archive, read a moment later: where are they now?

A reader lists the archive directory, then opens each trace, maybe minutes
later (a long analysis reads one file after the other). Meanwhile rotation
finalises the open file (``X.pcap.open`` -> ``X.pcap``), compression replaces
a trace by ``X.pcap.zst`` (or ``.gz``) and retention deletes the oldest ones.
Every reader of an archive (``bulk extract``, ``bulk backdoor``, ``bulk
contents``) opens its listed traces through :class:`Members`: a trace that
moved is followed to its new name, one that was deleted is reported once, as
a warning, and skipped (:class:`~bulk.errors.Vanished`).

Once a trace is open, the open file keeps its bytes whatever happens to its
name; only the opening has to follow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TypeVar

from bulk.archive.listing import OPEN_SUFFIX
from bulk.errors import TraceError, Vanished

T = TypeVar("T")

COMPRESSED_SUFFIXES = (".zst", ".gz")
_MAX_MOVES = 4  # .open -> final -> compressed: two moves at most; a bound anyway


def moved(path: str) -> str | None:
    """Where an archive trace listed as ``path`` is now: compressed (X.pcap.zst),
    finalised by rotation (X.pcap.open -> X.pcap, maybe compressed since), or
    None if it is gone (retention deleted it)."""
    base = path[: -len(OPEN_SUFFIX)] if path.endswith(OPEN_SUFFIX) else path
    for cand in (base, *(base + s for s in COMPRESSED_SUFFIXES)):
        if cand != path and os.path.exists(cand):
            return cand
    return None


def follow(path: str, open_one: Callable[[str], T]) -> tuple[T, str]:
    """``open_one(path)``, or, if that fails because the trace is no longer at
    ``path``, ``open_one`` of where it went; with the path finally opened.

    Raises :class:`~bulk.errors.Vanished` if the trace was deleted, and what
    ``open_one`` raised if the trace is there but unreadable.
    """
    for _ in range(_MAX_MOVES):
        try:
            return open_one(path), path
        except (TraceError, OSError):
            if os.path.exists(path):
                raise
            new = moved(path)
            if new is None:
                break
            path = new
    raise Vanished(path, None, "deleted since listed; skipped")


class Members:
    """The traces a reader found by listing archives (``listed``); other paths
    (named on the command line) are opened as they are, and must be there.

    ``warn`` receives one line per trace deleted since it was listed (once, however
    often the reader tries to open it).
    """

    def __init__(self, listed: Iterable[str], warn: Callable[[str], None]) -> None:
        self._listed = set(listed)
        self._warn = warn
        self._vanished: set[str] = set()
        self.current: dict[str, str] = {}  # listed path -> where it was last opened

    def open(self, path: str, open_one: Callable[[str], T], /) -> T:
        """``open_one(path)``, following a listed trace that moved (a
        :class:`bulk.trace.source.Opener`).

        Raises :class:`~bulk.errors.Vanished` (after the warning) for a listed
        trace that was deleted, so that callers that can skip it do.
        """
        if path not in self._listed:
            return open_one(path)
        try:
            result, where = follow(self.current.get(path, path), open_one)
        except Vanished as exc:
            if path not in self._vanished:
                self._vanished.add(path)
                self._warn(str(Vanished(path, None, exc.reason)))
            raise Vanished(path, None, exc.reason) from None
        self.current[path] = where
        return result
