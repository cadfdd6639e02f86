"""The capture's archiver process: finalise, catalogue, index and repair files.

Nothing here may stall the capture loop: the fsync of a large file, a
catalogue locked by another process (busy timeout), the scan that builds a
file's time index. So they run in a separate process, forked before the
capture handle is opened, at a lower CPU priority, fed job lines through a
pipe. A process rather than a thread: a thread would hold the GIL while the
capture loop needs it, and its lower priority would then slow the capture
too. A catalogue failure is logged and never stops anything: the files are
the archive, the catalogue can be rebuilt.

The archiver ignores SIGINT, SIGTERM and SIGHUP; it ends when the capture
closes the pipe and the jobs already sent are done. If the capture dies, the
pipe closes too.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from bulk.archive.catalogue import Catalogue, FileRecord
from bulk.archive.hostindex import write_index_for
from bulk.archive.naming import finalise
from bulk.archive.repair import repair_open_file
from bulk.archive.scan import IndexEntry, TraceScan, scan_trace
from bulk.capture.series import ClosedFile, OpenedFile
from bulk.errors import BulkError

log = logging.getLogger("bulk.capture")
_NICE = 10
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20
STOP_TIMEOUT_S = 60.0


class Archiver:
    """The capture side: sends jobs to the archiver process, in order."""

    def __init__(self, directory: str, index: bool = True) -> None:
        self.directory = directory
        self.index = index
        self._w: int | None = None
        self.pid: int | None = None

    def start(self, after_fork: Callable[[], None] | None = None) -> None:
        """Fork the archiver process (before the capture opens its handle).

        ``after_fork`` runs in the child first (to drop inherited descriptors).
        """
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(w)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)
                if after_fork is not None:
                    after_fork()
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, 0, _NICE)
                _Jobs(self.directory, self.index).serve(r)
                code = 0
            finally:
                os._exit(code)
        os.close(r)
        self._w, self.pid = w, pid

    def _send(self, kind: str, **job: Any) -> None:
        if self._w is None:
            raise RuntimeError("archiver not started")
        line = json.dumps({"kind": kind, **job}) + "\n"
        try:
            os.write(self._w, line.encode())
        except BrokenPipeError:
            log.error("archiver process gone: %s left for the next start", job.get("path"))

    def opened(self, opened: OpenedFile, linktype: int, snaplen: int) -> None:
        n = opened.name
        self._send(
            "opened",
            path=opened.path,
            interface=n.interface,
            worker=n.worker,
            seq=n.seq,
            opened_ns=opened.opened_ns,
            linktype=linktype,
            snaplen=snaplen,
        )

    def first_packet(self, opened: OpenedFile, first_ns: int) -> None:
        self._send("first", path=opened.path, first_ns=first_ns)

    def closed(self, c: ClosedFile) -> None:
        self._send(
            "closed",
            path=c.opened.path,
            packets=c.packets,
            bytes=c.bytes,
            size=c.size,
            first_ns=c.first_ns,
            drops=c.drops,
            ifdrops=c.ifdrops,
            closed_ns=c.closed_ns,
            last_ns=c.last_ns,
            entries=c.entries,
        )

    def repair(self, path: str, linktype: int, snaplen: int) -> None:
        self._send("repair", path=path, linktype=linktype, snaplen=snaplen)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Close the pipe and wait (bounded) for the jobs sent to be done."""
        if self._w is not None:
            os.close(self._w)
            self._w = None
        if self.pid is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, _status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                log.warning("archiver (pid %d) still busy; left to finish alone", self.pid)
                break
            time.sleep(0.02)
        self.pid = None


class _Jobs:
    """The archiver process: runs job lines in order."""

    def __init__(self, directory: str, index: bool) -> None:
        self.directory = directory
        self.index = index
        self._cat: Catalogue | None = None
        self._cat_failed = False
        self._formats: dict[str, tuple[int, int]] = {}  # open path -> (linktype, snaplen)

    def serve(self, fd: int) -> None:
        try:
            with os.fdopen(fd, "rb") as pipe:
                for line in pipe:
                    job = json.loads(line)
                    try:
                        self._do(job)
                    except BulkError as exc:
                        log.error("%s", exc)
                    except OSError as exc:
                        where = exc.filename or "archive"
                        log.error("%s: %s", where, exc.strerror)
                    if job.get("kind") in ("closed", "repair"):
                        _give_back_memory()
        finally:
            if self._cat is not None:
                self._cat.close()

    def _do(self, job: dict[str, Any]) -> None:
        kind = job["kind"]
        name = os.path.basename(job["path"])
        if kind == "opened":
            self._opened(job, name)
        elif kind == "first":
            self._catalogue("update_file", name, first_ns=job["first_ns"])
        elif kind == "closed":
            self._finish(job)
        elif kind == "repair":
            self._repair(job)
        else:
            log.error("archiver: unknown job %r", kind)

    def _opened(self, job: dict[str, Any], name: str) -> None:
        """Add the open row; drop it again if the file was finalised meanwhile.

        A capture killed with kill -9 leaves this process running its last jobs
        while the next start's archiver repairs and finalises the files left
        open: an archiver behind on its jobs can reach a file's 'opened' after
        that repair, and its row would then name a file that is gone. The row
        is added first and the file looked at after: either the look finds the
        open name gone, and the row is dropped here (the repair records the
        final file under its own name, before or after), or the row was there
        before the repair unlinked the open name, and the repair's catalogue
        step, which follows the unlink, finds the row and renames it.
        """
        self._formats[job["path"]] = (job["linktype"], job["snaplen"])
        self._catalogue(
            "add_file",
            FileRecord(
                name=name,
                state="open",
                interface=job["interface"],
                worker=job["worker"],
                seq=job["seq"],
                linktype=job["linktype"],
                snaplen=job["snaplen"],
                opened_ns=job["opened_ns"],
            ),
        )
        if not os.path.lexists(job["path"]):
            self._formats.pop(job["path"], None)
            if self._catalogue("remove_file", name):
                log.info("%s: finalised meanwhile by a later start; open row dropped", name)

    def _finish(self, job: dict[str, Any]) -> None:
        final = finalise(job["path"])
        name = os.path.basename(final)
        open_name = os.path.basename(job["path"])
        fields: dict[str, Any] = {
            "name": name,
            "state": "closed",
            "size": job["size"],
            "drops": job["drops"],
            "ifdrops": job["ifdrops"],
            "closed_ns": job["closed_ns"],
        }
        fmt = self._formats.pop(job["path"], None)
        if job.get("entries") is not None and fmt is not None:
            # The libpcap engine indexed the file while writing it: no scan.
            self._record(open_name, _capture_scan(final, job, *fmt), **fields)
            if self.index:
                self._host_index(final)
            return
        if not self.index:
            # The capture's own counts; the time range and index wait for 'bulk index'.
            fields.update(
                packets=job["packets"],
                bytes=job["bytes"],
                raw_size=job["size"],
                first_ns=job["first_ns"],
            )
            if self._catalogue("get", open_name) is not None:
                self._catalogue("update_file", open_name, **fields)
            return
        scan = scan_trace(final)
        if scan.packets != job["packets"]:
            log.warning(
                "%s: the capture counted %d packets, the file holds %d",
                name,
                job["packets"],
                scan.packets,
            )
        self._record(open_name, scan, **fields)
        self._host_index(final)

    def _host_index(self, final: str) -> None:
        """Write the closed trace's host/port index, so extraction can skip it."""
        try:
            write_index_for(final)
        except BulkError as exc:
            log.error("%s: host index not written: %s", os.path.basename(final), exc)

    def _repair(self, job: dict[str, Any]) -> None:
        done = repair_open_file(job["path"], job["linktype"], job["snaplen"])
        log.warning("%s", done.describe())
        try:
            closed_ns: int | None = int(os.stat(done.final_path).st_mtime * 1e9)
        except OSError:
            closed_ns = None
        self._record(
            os.path.basename(job["path"]),
            done.scan,
            name=os.path.basename(done.final_path),
            state="closed",
            closed_ns=closed_ns,
        )
        if self.index:
            self._host_index(done.final_path)

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
            log.error("catalogue: %s", exc)
            return None


def _give_back_memory() -> None:
    """Return the heap a file's scan and host index used to the system.

    Measured: over 30 closed files of 20 MB each, the archiver grew from 25 to
    37 MiB (glibc kept the freed heap, fragmented); trimming after each file
    kept it at 21 MiB. Once per file, so its cost does not matter.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _capture_scan(path: str, job: dict[str, Any], linktype: int, snaplen: int) -> TraceScan:
    """What the capture learnt of a file while writing it, as a scan's result."""
    entries = [IndexEntry(*e) for e in job["entries"]]
    packets = job["packets"]
    return TraceScan(
        path,
        format="pcap",
        linktype=linktype,
        snaplen=snaplen,
        packets=packets,
        bytes=job["bytes"],
        end_offset=job["size"],
        first_ns=job["first_ns"],
        last_ns=job["last_ns"],
        min_ns=min((e.min_ns for e in entries), default=None),
        max_ns=max((e.max_ns for e in entries), default=None),
        entries=entries,
    )
