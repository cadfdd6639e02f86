"""One ``bulk compress`` run over an archive directory: sweep, compress, retention."""

from __future__ import annotations

import errno
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from bulk.archive.catalogue import Catalogue, catalogue_path
from bulk.archive.listing import traces_in_dir
from bulk.compress.budget import format_size
from bulk.compress.codec import CompressSettings
from bulk.compress.retention import (
    Deletion,
    DiskUsage,
    RetentionPolicy,
    archive_bytes,
    closed_traces,
    disk_usage,
    plan,
)
from bulk.compress.safe import (
    Archive,
    Log,
    Outcome,
    Written,
    can_compress,
    delete_trace,
    finish_one,
    is_busy,
    lock_run,
    sweep,
    write_verified,
)
from bulk.errors import ArchiveError, TraceError, UsageError
from bulk.trace.seekable import Workers

# Files written at once (see _run_locked). Two: while one file's last frames are
# checked, synced, renamed and catalogued, the other's frames keep both cores busy.
# On 40 files of 12.5 MB (alternating runs of installed builds, 2 x 6 runs): median
# 1.47-1.51 s, 2.25-2.26 CPU s, against 1.68-1.72 s and 2.65-2.71 CPU s one at a
# time (zstd -3 -T2 on the same files: 1.45-1.49 s). Measured no faster before the
# checks had their own thread (docs/BENCHMARKS.md). One large file is unchanged.
PARALLEL_FILES = 2


@dataclass(frozen=True)
class RunOptions:
    directory: str
    settings: CompressSettings = field(default_factory=CompressSettings)
    older_than_s: float = 0.0
    policy: RetentionPolicy = field(default_factory=RetentionPolicy)
    dry_run: bool = False


@dataclass
class RunReport:
    directory: str
    dry_run: bool
    locked_out: bool = False
    swept: list[str] = field(default_factory=list)
    compressed: list[Outcome] = field(default_factory=list)
    would_compress: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[Deletion] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    usage_before: DiskUsage | None = None
    usage_after: DiskUsage | None = None
    archive_before: int = 0
    archive_after: int = 0

    def to_json(self) -> dict[str, Any]:
        def usage(u: DiskUsage | None) -> dict[str, Any] | None:
            return None if u is None else {**asdict(u), "percent": round(u.percent, 2)}

        return {
            "directory": self.directory,
            "dry_run": self.dry_run,
            "locked_out": self.locked_out,
            "swept": self.swept,
            "compressed": [
                {**asdict(o), "ratio": (o.size / o.comp_size) if o.comp_size else None}
                for o in self.compressed
            ],
            "would_compress": self.would_compress,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "deleted": [asdict(d) for d in self.deleted],
            "warnings": self.warnings,
            "disk_before": usage(self.usage_before),
            "disk_after": usage(self.usage_after),
            "archive_bytes_before": self.archive_before,
            "archive_bytes_after": self.archive_after,
        }


def _open_catalogue(directory: str) -> Catalogue | None:
    if not os.path.exists(catalogue_path(directory)):
        return None
    return Catalogue.open(directory, create=False)


def select(directory: str, fmt: str, older_than_s: float, now: float) -> list[str]:
    """Closed uncompressed traces modified at least ``older_than_s`` ago, oldest first."""
    out: list[tuple[float, str]] = []
    for path in traces_in_dir(directory):
        if not can_compress(path, fmt):
            continue
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            continue
        if now - mtime >= older_than_s:
            out.append((mtime, path))
    return [p for _m, p in sorted(out)]


def _short_of_space(path: str) -> str | None:
    """Why the compressed copy may not fit beside the original, or None.

    The copy is never larger than the original plus its index, so that much
    free space (plus 1% of the filesystem, at most 64 MiB, left for the live
    capture) is asked for before writing: a compression must never fill the
    disk under a running capture."""
    st = os.statvfs(os.path.dirname(path) or ".")
    free = st.f_bavail * st.f_frsize
    reserve = min(64 << 20, st.f_blocks * st.f_frsize // 100)
    need = os.path.getsize(path) + reserve
    if free >= need:
        return None
    return (
        f"not enough free space for the compressed copy (needs up to {format_size(need)}, "
        f"{format_size(free)} free); retention can make room"
    )


def _room_beside(path: str, copies: int) -> bool:
    """Room for ``copies`` bytes of compressed copies beside ``path`` (see _short_of_space)."""
    st = os.statvfs(os.path.dirname(path) or ".")
    reserve = min(64 << 20, st.f_blocks * st.f_frsize // 100)
    return st.f_bavail * st.f_frsize >= copies + reserve


def _finish_next(
    in_flight: deque[tuple[str, int, Future[Written]]],
    report: RunReport,
    archive: Archive,
    log: Log,
) -> None:
    """Wait for the oldest file being written; record it and delete its original."""
    path, _size, fut = in_flight.popleft()
    try:
        out = finish_one(fut.result(), archive)
    except TraceError as exc:
        report.skipped.append((path, str(exc)))
        log(f"skipped {path}: not compressed: {exc}")
        return
    except (ArchiveError, OSError) as exc:
        reason = str(exc)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            reason = f"no space left for the compressed copy ({exc.strerror})"
        report.failed.append((path, reason))
        log(f"FAILED to compress {path}: {reason}; the original is kept")
        return
    report.compressed.append(out)
    ratio = out.size / out.comp_size if out.comp_size else 0.0
    note = f"; WARNING: {out.damage} (kept as is)" if out.damage else ""
    log(
        f"compressed {out.src} -> {os.path.basename(out.dst)}: {format_size(out.size)} -> "
        f"{format_size(out.comp_size)} (ratio {ratio:.2f}), {out.packets} packets, "
        f"{out.frames} frames, {out.seconds:.1f} s{note}"
    )


def run(options: RunOptions, log: Log) -> RunReport:
    directory = options.directory
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: not a directory")
    report = RunReport(directory, options.dry_run)
    try:
        lock_fd = lock_run(directory)
    except ArchiveError as exc:
        if not options.dry_run:
            raise
        lock_fd = None  # a dry run only reads: a read-only archive is fine
        report.warnings.append(str(exc))
        log(f"warning: {exc}")
    if lock_fd is None and not report.warnings:
        msg = f"another bulk compress is running on {directory} (it holds .bulk/compress.lock)"
        if not options.dry_run:
            report.locked_out = True
            log(f"{msg}; nothing done")
            return report
        report.warnings.append(msg)
        log(f"warning: {msg}")
    try:
        catalogue = _open_catalogue(directory)
        try:
            _run_locked(options, report, Archive(directory, catalogue), log)
        finally:
            if catalogue is not None:
                catalogue.close()
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return report


def _run_locked(options: RunOptions, report: RunReport, archive: Archive, log: Log) -> None:
    directory = options.directory
    dry = options.dry_run
    report.usage_before = disk_usage(directory)
    report.archive_before = archive_bytes(directory)
    report.swept = sweep(directory, archive, log, dry_run=dry)

    settings = options.settings
    # Up to PARALLEL_FILES files at a time, written in threads of their own that
    # share one set of compression and check threads; the catalogue is written
    # here, in this thread only, in the order the files were picked.
    with (
        Workers(settings.threads, verify=True) as workers,
        ThreadPoolExecutor(PARALLEL_FILES, thread_name_prefix="bulk-file") as pool,
    ):
        in_flight: deque[tuple[str, int, Future[Written]]] = deque()
        for path in select(directory, settings.fmt, options.older_than_s, time.time()):
            pending = archive.still_cataloguing(path)
            if pending:
                report.skipped.append((path, pending))
                log(f"skipped {path}: {pending}")
                continue
            if dry:
                report.would_compress.append(path)
                log(f"would compress {path} ({format_size(os.path.getsize(path))})")
                continue
            if is_busy(path):
                report.skipped.append((path, "locked by another process"))
                log(f"skipped {path}: locked by another process")
                continue
            if len(in_flight) >= PARALLEL_FILES:
                _finish_next(in_flight, report, archive, log)
            size = os.path.getsize(path)
            if in_flight and not _room_beside(path, size + sum(n for _p, n, _f in in_flight)):
                # Not room for both copies at once: let the other file finish (and
                # delete its original) first, as a run one file at a time would.
                while in_flight:
                    _finish_next(in_flight, report, archive, log)
            short = _short_of_space(path)
            if short:
                report.failed.append((path, short))
                log(f"FAILED to compress {path}: {short}; the original is kept")
                continue
            in_flight.append((path, size, pool.submit(write_verified, path, settings, workers)))
        while in_flight:
            _finish_next(in_flight, report, archive, log)

    policy = options.policy
    if policy.active:
        if not dry:
            for name in archive.forget_missing():
                log(f"forgot {name}: its file is gone (an interrupted deletion)")
        files, busy = closed_traces(directory, archive)
        for b in busy:
            log(f"kept {b}: locked by another process (being compressed)")
        usage = disk_usage(directory)
        deletions, warning = plan(files, policy, time.time_ns(), usage, archive_bytes(directory))
        if dry and report.would_compress and policy.budget is not None:
            report.warnings.append(
                "dry run: the budget is computed with sizes before compression; a real run "
                "compresses first and may delete less"
            )
        for d in deletions:
            if dry:
                report.deleted.append(d)
                log(f"would delete {d.path} ({format_size(d.bytes)}): {d.reason}")
                continue
            if is_busy(d.path):
                log(f"kept {d.path}: locked by another process")
                continue
            try:
                delete_trace(d.path, archive)
            except FileNotFoundError:
                archive.note_deleted(d.path)  # deleted meanwhile: its row goes too
                continue
            except (OSError, ArchiveError) as exc:
                report.failed.append((d.path, f"cannot delete: {exc}"))
                log(f"FAILED to delete {d.path}: {exc}")
                continue
            report.deleted.append(d)
            log(f"deleted {d.path} ({format_size(d.bytes)}): {d.reason}")
        if warning:
            report.warnings.append(warning)
            log(f"warning: {warning}")
    for w in report.warnings:
        if w.startswith("dry run"):
            log(f"note: {w}")
    report.usage_after = disk_usage(directory)
    report.archive_after = archive_bytes(directory)
