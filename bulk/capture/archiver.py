"""The capture's background thread: finalise, catalogue, index and repair files.

Nothing here may stall the capture loop: fsync of a large file, a catalogue
locked by another process (busy timeout), or the scan that builds a file's
time index all run in this thread, at a lower CPU priority, while the loop
keeps draining the kernel ring. A catalogue failure is logged and never stops
the capture: the files are the archive, the catalogue can be rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

from bulk.archive.catalogue import Catalogue, FileRecord
from bulk.archive.naming import finalise
from bulk.archive.repair import repair_open_file
from bulk.archive.scan import TraceScan, scan_trace
from bulk.capture.series import ClosedFile, OpenedFile
from bulk.errors import BulkError

log = logging.getLogger("bulk.capture")
_NICE = 10


@dataclass(frozen=True)
class _Opened:
    opened: OpenedFile
    linktype: int
    snaplen: int


@dataclass(frozen=True)
class _First:
    opened: OpenedFile
    first_ns: int


@dataclass(frozen=True)
class _Repair:
    path: str
    linktype: int
    snaplen: int


class Archiver:
    """Runs jobs in order in one thread. ``stop()`` finishes the queue, then returns."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="bulk-archiver", daemon=True)
        self._cat: Catalogue | None = None
        self._cat_failed = False
        self.finalised: list[str] = []  # final paths, in order (read by tests and status)
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def opened(self, opened: OpenedFile, linktype: int, snaplen: int) -> None:
        self._queue.put(_Opened(opened, linktype, snaplen))

    def first_packet(self, opened: OpenedFile, first_ns: int) -> None:
        self._queue.put(_First(opened, first_ns))

    def closed(self, closed: ClosedFile) -> None:
        self._queue.put(closed)

    def repair(self, path: str, linktype: int, snaplen: int) -> None:
        self._queue.put(_Repair(path, linktype, snaplen))

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float | None = None) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE)
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                try:
                    self._do(job)
                except BulkError as exc:
                    self.errors += 1
                    log.error("%s", exc)
                except OSError as exc:
                    self.errors += 1
                    log.error("%s: %s", getattr(exc, "filename", None) or "archive", exc.strerror)
        finally:
            if self._cat is not None:
                self._cat.close()

    def _do(self, job: object) -> None:
        if isinstance(job, _Opened):
            o = job.opened
            self._catalogue(
                "add_file",
                FileRecord(
                    name=os.path.basename(o.path),
                    state="open",
                    interface=o.name.interface,
                    worker=o.name.worker,
                    seq=o.name.seq,
                    linktype=job.linktype,
                    snaplen=job.snaplen,
                    opened_ns=o.opened_ns,
                ),
            )
        elif isinstance(job, _First):
            self._catalogue("update_file", os.path.basename(job.opened.path), first_ns=job.first_ns)
        elif isinstance(job, ClosedFile):
            self._finish(job)
        elif isinstance(job, _Repair):
            self._repair(job)

    def _finish(self, c: ClosedFile) -> None:
        final = finalise(c.opened.path)
        self.finalised.append(final)
        name = os.path.basename(final)
        scan = scan_trace(final)
        if scan.packets != c.packets:
            log.warning(
                "%s: the capture counted %d packets, the file holds %d",
                name,
                c.packets,
                scan.packets,
            )
        self._record(
            os.path.basename(c.opened.path),
            scan,
            name=name,
            state="closed",
            size=c.size,
            drops=c.drops,
            ifdrops=c.ifdrops,
            closed_ns=c.closed_ns,
        )

    def _repair(self, job: _Repair) -> None:
        done = repair_open_file(job.path, job.linktype, job.snaplen)
        self.finalised.append(done.final_path)
        log.warning("%s", done.describe())
        try:
            closed_ns: int | None = int(os.stat(done.final_path).st_mtime * 1e9)
        except OSError:
            closed_ns = None
        self._record(
            os.path.basename(job.path),
            done.scan,
            name=os.path.basename(done.final_path),
            state="closed",
            closed_ns=closed_ns,
        )

    def _record(self, open_name: str, scan: TraceScan, **fields: Any) -> None:
        """Store a finalised file's scan, under its open row when there is one."""
        known = self._catalogue("get", open_name) is not None
        self._catalogue("record_scan", open_name if known else fields["name"], scan, **fields)

    def _open_catalogue(self) -> Catalogue | None:
        if self._cat is None and not self._cat_failed:
            try:
                self._cat = Catalogue.open(self.directory)
            except BulkError as exc:
                self._cat_failed = True
                log.error("catalogue unusable, traces are written without it: %s", exc)
        return self._cat

    def _catalogue(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a catalogue method; log a failure and return None instead of raising."""
        cat = self._open_catalogue()
        if cat is None:
            return None
        try:
            return getattr(cat, method)(*args, **kwargs)
        except BulkError as exc:
            self.errors += 1
            log.error("catalogue: %s", exc)
            return None
