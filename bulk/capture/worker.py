"""The capture loop of one worker: poll, dispatch into the open file, rotate, report.

The handle is non-blocking; the loop sleeps in ``poll`` on the handle's file
descriptor and a signal wake-up pipe, never longer than the next time
rotation or state write. SIGHUP rotates now; SIGTERM and SIGINT stop: the
ring is drained, the file closed, finalised and catalogued. Rotation switches
the dumper to the next file between two dispatch calls, so no packet is lost:
packets waiting in the kernel ring simply go to the next file.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pcapy

from bulk.archive.catalogue import Catalogue
from bulk.archive.naming import highest_seq
from bulk.capture.archiver import Archiver
from bulk.capture.options import CaptureOptions
from bulk.capture.series import ClosedFile, Series
from bulk.capture.state import LiveState, StateWriter
from bulk.errors import BulkError, CaptureError

log = logging.getLogger("bulk.capture")
DEDUPE_SECONDS = 1.0


class _Flags:
    def __init__(self) -> None:
        self.rotate = False
        self.stop = False
        self.signal_name = ""

    def on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.rotate = True

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        self.signal_name = signal.Signals(signum).name


def next_seq(directory: str, interface: str, worker: int) -> int:
    """One more than the highest sequence number of the series, in files or catalogue."""
    seq = highest_seq(directory, interface, worker)
    try:
        with Catalogue.open(directory) as cat:
            seq = max(seq, cat.last_seq(interface, worker))
    except BulkError as exc:
        log.warning("catalogue unusable, sequence taken from file names: %s", exc)
    return seq + 1


class Worker:
    """One capture handle writing one series of files."""

    def __init__(
        self,
        opts: CaptureOptions,
        handle: Any,
        worker: int,
        archiver: Archiver,
        joined_ns: int | None = None,
    ) -> None:
        self.opts = opts
        self.handle = handle
        self.worker = worker
        self.archiver = archiver
        self.linktype = int(handle.datalink())
        self.series = Series(
            handle,
            opts.directory,
            opts.interface,
            worker,
            next_seq(opts.directory, opts.interface, worker),
        )
        self.dedupe_until: float | None = None
        if joined_ns is not None and worker > 0:
            self.series.drop_before_us = joined_ns // 1000
            self.dedupe_until = time.monotonic() + DEDUPE_SECONDS
        self.flags = _Flags()
        self.started_ns = time.time_ns()
        self.packets = 0  # in closed files
        self.bytes = 0  # of closed files
        self.files_closed = 0
        self.rotations = 0
        self.last_rotation_ns: int | None = None
        self._last_state = (time.monotonic(), 0, 0)
        self.state_writer = StateWriter(opts.directory)
        self._first_reported = False

    # -- rotation --------------------------------------------------------------

    def _next_time_rotation(self, now: float) -> float | None:
        n = self.opts.rotate_seconds
        if n is None:
            return None
        if self.opts.align:
            return (int(time.time() // n) + 1) * n - time.time() + now
        return now + n

    def _open_next(self) -> None:
        opened = self.series.open_next()
        self._first_reported = False
        self.archiver.opened(opened, self.linktype, self.opts.snaplen)

    def _close(self, reopen: bool, reason: str) -> ClosedFile | None:
        _recv, drop, ifdrop = self.handle.stats()
        if reopen:
            closed = self.series.close_current(drop, ifdrop, reopen=True)
            assert self.series.current is not None
            self._first_reported = False
            self.archiver.opened(self.series.current, self.linktype, self.opts.snaplen)
        else:
            closed = self.series.close_current(drop, ifdrop, reopen=False)
        if closed is None:
            return None
        self.packets += closed.packets
        self.bytes += closed.size
        self.files_closed += 1
        if reopen:
            self.rotations += 1
            self.last_rotation_ns = closed.closed_ns
        log.info(
            "closed %s (%s): %d packets, %d bytes, %d drops, %d interface drops",
            closed.opened.name.final.name,
            reason,
            closed.packets,
            closed.bytes,
            closed.drops,
            closed.ifdrops,
        )
        self.archiver.closed(closed)
        return closed

    # -- live state ------------------------------------------------------------

    def write_state(self, stopping: bool = False) -> None:
        recv, drop, ifdrop = self.handle.stats()
        now = time.monotonic()
        current_bytes = self.series.current_size()
        total_packets = self.packets + self.series.packets
        total_bytes = self.bytes + current_bytes
        t0, p0, b0 = self._last_state
        dt = max(now - t0, 1e-6)
        self._last_state = (now, total_packets, total_bytes)
        cur = self.series.current
        state = LiveState(
            pid=os.getpid(),
            interface=self.opts.interface,
            worker=self.worker,
            workers=self.opts.workers,
            started_ns=self.started_ns,
            updated_ns=time.time_ns(),
            packets=total_packets,
            bytes=total_bytes,
            received=recv,
            drops=drop,
            ifdrops=ifdrop,
            pps=(total_packets - p0) / dt,
            bps=max(total_bytes - b0, 0) / dt,
            current_file=os.path.basename(cur.path) if cur else None,
            current_packets=self.series.packets,
            current_bytes=current_bytes,
            current_opened_ns=cur.opened_ns if cur else None,
            files_closed=self.files_closed,
            rotations=self.rotations,
            last_rotation_ns=self.last_rotation_ns,
            rotate_seconds=self.opts.rotate_seconds,
            rotate_bytes=self.opts.rotate_bytes,
            stopping=stopping,
        )
        self.state_writer.submit(state)

    # -- the loop --------------------------------------------------------------

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Capture until SIGTERM/SIGINT. Installs signal handlers (main thread only)."""
        flags = self.flags
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_handlers = {
            signal.SIGHUP: signal.signal(signal.SIGHUP, flags.on_hup),
            signal.SIGTERM: signal.signal(signal.SIGTERM, flags.on_stop),
            signal.SIGINT: signal.signal(signal.SIGINT, flags.on_stop),
        }
        old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        try:
            self._run(rfd, ready)
        finally:
            self.state_writer.close()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            os.close(rfd)
            os.close(wfd)

    def _run(self, rfd: int, ready: Callable[[], None] | None) -> None:
        self._open_next()
        self.series.set_base_stats(*self.handle.stats()[1:])
        if ready is not None:
            ready()
        try:
            self._loop(rfd)
        except pcapy.PcapError as exc:
            # The interface went away or failed: keep what was captured.
            log.error("capture failed: %s", exc)
            self._close(reopen=False, reason="capture failed")
            self.write_state(stopping=True)
            raise CaptureError(f"{self.opts.interface}: capture failed: {exc}") from None

    def _loop(self, rfd: int) -> None:
        flags = self.flags
        opts = self.opts
        series = self.series
        poller = select.poll()
        poller.register(self.handle.getfd(), select.POLLIN)
        poller.register(rfd, select.POLLIN)
        now = time.monotonic()
        rotate_at = self._next_time_rotation(now)
        state_at = now
        while not flags.stop:
            n = self._pump()
            now = time.monotonic()
            reason = ""
            if flags.rotate:
                flags.rotate = False
                reason = "SIGHUP"
            elif rotate_at is not None and now >= rotate_at:
                reason = "time"
            elif (
                opts.rotate_bytes is not None
                and series.packets
                and series.current_size() >= opts.rotate_bytes
            ):
                reason = "size"
            if reason:
                self._close(reopen=True, reason=reason)
                # Rotation by time counts from the last rotation of any kind
                # (or goes to the next clock boundary with --align).
                rotate_at = self._next_time_rotation(now)
                state_at = now  # report the switch at once (bulk rotate waits for it)
            if now >= state_at:
                self.write_state()
                state_at = now + opts.state_interval
            if n >= self._busy_threshold:
                continue  # more is probably waiting: no sleep
            wait = state_at - now
            if rotate_at is not None:
                wait = min(wait, rotate_at - now)
            if flags.stop or flags.rotate:
                continue
            for fd, _ev in poller.poll(max(int(wait * 1000) + 1, 1)):
                if fd == rfd:
                    _drain_pipe(rfd)
        self._stop()

    _busy_threshold = 4096

    def _pump(self) -> int:
        series = self.series
        n = series.pump()
        if series.first_ns is not None and not self._first_reported and series.current:
            self._first_reported = True
            self.archiver.first_packet(series.current, series.first_ns)
        if self.dedupe_until is not None and time.monotonic() >= self.dedupe_until:
            self.dedupe_until = None
            series.drop_before_us = None
            if series.skipped:
                log.info(
                    "skipped %d packets received before joining the fanout group", series.skipped
                )
        return n

    def _stop(self) -> None:
        """Drain what the kernel holds (a block is handed over within the timeout),
        then close and finalise the file."""
        log.info("stopping on %s", self.flags.signal_name or "request")
        deadline = time.monotonic() + 2.5 * self.opts.timeout_ms / 1000
        while time.monotonic() < deadline:
            if self._pump() == 0:
                time.sleep(0.01)
        self._close(reopen=False, reason="stop")
        self.write_state(stopping=True)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def run_worker(
    opts: CaptureOptions,
    handle: Any,
    worker: int,
    *,
    archiver: Archiver,
    repair: list[str],
    joined_ns: int | None = None,
    ready: Callable[[], None] | None = None,
) -> Worker:
    """Run one worker to the end; its archiver (started before the handle was
    opened) repairs ``repair`` first. The caller stops the archiver."""
    try:
        w = Worker(opts, handle, worker, archiver, joined_ns)
        for path in repair:
            archiver.repair(path, w.linktype, opts.snaplen)
        w.run(ready)
    except BulkError:
        raise
    except OSError as exc:
        raise CaptureError(f"{opts.interface}: {exc}") from None
    return w
