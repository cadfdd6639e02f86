"""Start a capture: check the directory, take the pid file, repair, run the workers.

With ``--workers 1`` the capture runs in this process. With N workers this
process forks them one after the other; each opens its own handle and joins
one PACKET_FANOUT group (flow hash), so the kernel spreads the interface's
packets over them without duplicating any, and each writes its own series of
files (readers merge them in time order). This process then only forwards
SIGHUP, SIGTERM and SIGINT to the workers; the workers die with it
(PR_SET_PDEATHSIG) and if one dies the others are stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import tempfile
import time
from types import FrameType
from typing import Any

from bulk.archive.listing import OPEN_SUFFIX
from bulk.archive.naming import check_interface_name, series_names
from bulk.archive.pidfile import PidFile
from bulk.capture.archiver import Archiver
from bulk.capture.handle import engine, join_fanout, open_live
from bulk.capture.options import CaptureOptions
from bulk.capture.state import remove_states
from bulk.capture.worker import run_worker
from bulk.errors import ArchiveError, BulkError, CaptureError

log = logging.getLogger("bulk.capture")
_PR_SET_PDEATHSIG = 1


def prepare_directory(directory: str) -> None:
    """Create the archive directory if needed and check that it is writable."""
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(
            f"{directory}: cannot create the archive directory: {exc.strerror}"
        ) from None
    if not os.path.isdir(directory):
        raise ArchiveError(f"{directory}: not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bulk-write-test-", dir=directory)
    except OSError as exc:
        raise ArchiveError(f"{directory}: archive directory not writable: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


def stale_open_files(directory: str, interface: str) -> list[str]:
    """Files of this interface left open by a capture that did not finish."""
    return [
        os.path.join(directory, n.name)
        for n in series_names(directory, interface)
        if n.suffix == OPEN_SUFFIX
    ]


def run_capture(opts: CaptureOptions) -> int:
    """Capture until stopped by a signal. Raises BulkError for what prevents it."""
    opts.check()
    check_interface_name(opts.interface)
    prepare_directory(opts.directory)
    os.umask(0o027)  # traces are not world-readable
    started_ns = time.time_ns()
    pidfile = PidFile.acquire(opts.directory, opts.interface, started_ns)
    try:
        stale = stale_open_files(opts.directory, opts.interface)
        remove_states(opts.directory, opts.interface)
        if opts.workers == 1:
            archiver = Archiver(opts.directory, index=opts.index)
            archiver.start(after_fork=pidfile.close_in_child)
            try:
                handle = open_live(opts)
                _log_start(opts)
                run_worker(
                    opts, handle, 0, archiver=archiver, repair=stale,
                    reopen=lambda: open_live(opts),
                )  # fmt: skip
            finally:
                archiver.stop()
        else:
            _run_fanout(opts, pidfile, stale)
    finally:
        pidfile.release()
    log.info("capture on %s stopped", opts.interface)
    return 0


def _log_start(opts: CaptureOptions) -> None:
    log.info(
        "capturing on %s into %s (%s engine, workers %d, snaplen %d, buffer %d bytes, rotation %s)",
        opts.interface,
        opts.directory,
        engine(opts),
        opts.workers,
        opts.snaplen,
        opts.buffer_size,
        _rotation_text(opts),
    )


def _rotation_text(opts: CaptureOptions) -> str:
    parts = []
    if opts.rotate_seconds is not None:
        parts.append(f"every {opts.rotate_seconds:g} s" + (" on the clock" if opts.align else ""))
    if opts.rotate_bytes is not None:
        parts.append(f"at {opts.rotate_bytes} bytes")
    parts.append("on SIGHUP")
    return ", ".join(parts)


class _Fanout:
    def __init__(self) -> None:
        self.children: dict[int, int] = {}  # pid -> worker number
        self.stopping = False

    def forward(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)


def _run_fanout(opts: CaptureOptions, pidfile: PidFile, stale: list[str]) -> None:
    fan = _Fanout()
    group = os.getpid() & 0xFFFF
    handlers = {
        sig: signal.signal(sig, fan.forward)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    }
    linktype = -1
    failure: BulkError | None = None
    try:
        for k in range(opts.workers):
            pid, reply = _start_worker(opts, k, group, pidfile)
            fan.children[pid] = k
            if not reply.startswith("ok "):
                failure = _worker_error(reply, k)
                break
            linktype = int(reply.split()[1])
            if fan.stopping:
                break
        if failure is not None or fan.stopping:
            fan.forward(signal.SIGTERM, None)
        else:
            _log_start(opts)
        if failure is None and not fan.stopping and stale:
            archiver = Archiver(opts.directory, index=opts.index)
            archiver.start(after_fork=pidfile.close_in_child)
            for path in stale:
                archiver.repair(path, linktype, opts.snaplen)
            archiver.stop()
        while fan.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            k = fan.children.pop(pid, -1)
            code = os.waitstatus_to_exitcode(status)
            if not fan.stopping:
                log.error("worker %d (pid %d) ended unexpectedly (status %d)", k, pid, code)
                failure = failure or CaptureError(f"worker {k} ended unexpectedly")
                fan.forward(signal.SIGTERM, None)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if failure is not None:
        raise failure


def _worker_error(reply: str, k: int) -> BulkError:
    if reply.startswith("E") and " " in reply:
        status, message = reply[1:].split(" ", 1)
        err = CaptureError(message.strip())
        with contextlib.suppress(ValueError):
            err.exit_status = int(status)
        return err
    return CaptureError(f"worker {k} failed to start")


def _start_worker(opts: CaptureOptions, k: int, group: int, pidfile: PidFile) -> tuple[int, str]:
    """Fork worker ``k``; wait until it has joined the group (or failed)."""
    rfd, wfd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            os.close(rfd)
            code = _worker_main(opts, k, group, wfd, pidfile=pidfile, parent=parent)
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    while True:
        chunk = os.read(rfd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    os.close(rfd)
    return pid, b"".join(chunks).decode(errors="replace").strip()


def _worker_main(
    opts: CaptureOptions, k: int, group: int, wfd: int, *, pidfile: PidFile, parent: int
) -> int:
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    pidfile.close_in_child()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return 1
    reported = False

    def ready() -> None:
        nonlocal reported
        os.write(wfd, f"ok {handle.datalink()}\n".encode())
        os.close(wfd)
        reported = True

    def reopen() -> Any:
        again = open_live(opts)
        join_fanout(again, group)
        return again

    archiver = Archiver(opts.directory, index=opts.index)
    archiver.start(after_fork=lambda: os.close(wfd))
    try:
        handle = open_live(opts)
        joined = join_fanout(handle, group)
        run_worker(
            opts, handle, k, archiver=archiver, repair=[], joined_ns=joined, ready=ready,
            reopen=reopen,
        )  # fmt: skip
    except BulkError as exc:
        if not reported:
            os.write(wfd, f"E{exc.exit_status} {exc}\n".encode())
        else:
            log.error("worker %d: %s", k, exc)
        return exc.exit_status
    finally:
        archiver.stop()
    return 0
