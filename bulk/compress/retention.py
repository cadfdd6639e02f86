"""Retention: which closed traces to delete, by age and by disk budget.

- ``keep_days``: a trace whose newest packet (from the catalogue; else the
  file's modification time, which compression keeps) is older than N days goes.
- ``budget`` as a percentage: the filesystem holding the archive may be at most
  that full (used blocks / size, as ``df``); as a size: the archive's traces
  (open file and side files included) may take at most that many bytes on disk.
  The oldest traces go first until the budget is met.

The open file (``.open``), hidden and temporary files, and traces locked by
another process (being compressed) are never candidates. Each deletion carries
its reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from bulk.archive.listing import traces_in_dir
from bulk.archive.naming import parse_name
from bulk.compress.budget import Budget, format_size
from bulk.compress.safe import Archive, allocated, is_busy

DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class RetentionPolicy:
    keep_days: float | None = None
    budget: Budget | None = None

    @property
    def active(self) -> bool:
        return self.keep_days is not None or self.budget is not None


@dataclass(frozen=True)
class TraceFile:
    path: str
    bytes: int  # allocated on disk, side files included
    time_ns: int  # newest packet, or modification time
    time_source: str  # "last packet" or "modified"


@dataclass(frozen=True)
class Deletion:
    path: str
    bytes: int
    reason: str


@dataclass(frozen=True)
class DiskUsage:
    total: int
    used: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.total if self.total else 0.0


def disk_usage(directory: str) -> DiskUsage:
    st = os.statvfs(directory)
    return DiskUsage(st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize)


def archive_bytes(directory: str) -> int:
    """Bytes the archive's traces take on disk, the open ones and side files included."""
    return sum(allocated(p) for p in traces_in_dir(directory, include_open=True))


def closed_traces(directory: str, archive: Archive) -> tuple[list[TraceFile], list[str]]:
    """Candidates for deletion, oldest first; and the busy files left out."""
    files: list[TraceFile] = []
    busy: list[str] = []
    for path in traces_in_dir(directory):
        if is_busy(path):
            busy.append(path)
            continue
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            continue
        rec = archive.record(path)
        if rec is not None and rec.last_ns is not None:
            files.append(TraceFile(path, allocated(path), rec.last_ns, "last packet"))
        else:
            files.append(TraceFile(path, allocated(path), mtime, "modified"))
    files = in_capture_order(files)
    files.sort(key=lambda t: (t.time_ns, t.path))
    return files, busy


def in_capture_order(files: list[TraceFile]) -> list[TraceFile]:
    """Times that never go back within a capture series.

    After the clock was stepped back, a series' later files hold earlier packet
    times (and modification times) than the files before them: by those times
    the newest captures would go first. A file of a series is therefore never
    considered older than the file before it (by sequence number).
    """
    last: dict[tuple[str, int], int] = {}
    keyed = []
    for t in files:
        name = parse_name(os.path.basename(t.path))
        keyed.append(((name.interface, name.worker, name.seq) if name else None, t))
    out = []
    for key, t in sorted(keyed, key=lambda kt: kt[0] or ("", -1, -1)):
        if key is not None:
            series = key[:2]
            if t.time_ns < last.get(series, t.time_ns):
                t = replace(t, time_ns=last[series])
            last[series] = t.time_ns
        out.append(t)
    return out


def plan(
    files: list[TraceFile],
    policy: RetentionPolicy,
    now_ns: int,
    usage: DiskUsage,
    archive_total: int,
) -> tuple[list[Deletion], str | None]:
    """The deletions the policy asks for (oldest first), and a warning when the
    budget cannot be met by deleting closed traces."""
    out: list[Deletion] = []
    gone: set[str] = set()
    freed = 0
    if policy.keep_days is not None:
        cutoff = now_ns - int(policy.keep_days * DAY_NS)
        for t in files:
            if t.time_ns < cutoff:
                age = (now_ns - t.time_ns) / DAY_NS
                out.append(
                    Deletion(
                        t.path,
                        t.bytes,
                        f"older than --keep-days {policy.keep_days:g} "
                        f"({t.time_source} {age:.1f} days ago)",
                    )
                )
                gone.add(t.path)
                freed += t.bytes
    warning = None
    budget = policy.budget
    if budget is not None:
        if budget.percent is not None:
            limit = int(usage.total * budget.percent / 100)
            current = usage.used
            what = f"filesystem {usage.percent:.1f}% used ({format_size(usage.used)})"
        else:
            limit = budget.size or 0
            current = archive_total
            what = f"archive takes {format_size(archive_total)}"
        excess = current - freed - limit
        for t in files:
            if excess <= 0:
                break
            if t.path in gone:
                continue
            out.append(
                Deletion(
                    t.path,
                    t.bytes,
                    f"--max-disk {budget}: {what}, budget {format_size(limit)}; oldest first",
                )
            )
            gone.add(t.path)
            excess -= t.bytes
        if excess > 0:
            warning = (
                f"--max-disk {budget} cannot be met: {format_size(excess)} over budget after "
                "deleting every closed trace (the open file and busy files are kept)"
            )
    return out, warning
