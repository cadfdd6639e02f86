"""The capture loop of one worker: poll, dispatch into the open file, rotate, report.

The handle is non-blocking; the loop sleeps in ``poll`` on the handle's file
descriptor and a signal wake-up pipe, never longer than the next time
rotation or state write. SIGHUP rotates now; SIGTERM and SIGINT stop: the
ring is drained, the file closed, finalised and catalogued. Rotation switches
the dumper to the next file between two dispatch calls, so no packet is lost:
packets waiting in the kernel ring simply go to the next file.

A full trace filesystem pauses the reading (the kernel counts what it drops)
and an interface that goes down closes the file until it is back: see
:mod:`bulk.capture.guard`.
"""

from __future__ import annotations

import contextlib
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
from bulk.capture.guard import REOPEN_INTERVAL_S, RESUME_FACTOR, Outage, free_bytes, space_reserve
from bulk.capture.options import CaptureOptions
from bulk.capture.series import DISPATCH_BATCH, ClosedFile, DumpSeries, Series
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
        *,
        reopen: Callable[[], Any] | None = None,
    ) -> None:
        self.opts = opts
        self.handle = handle
        self.worker = worker
        self.archiver = archiver
        self.reopen = reopen  # a new handle on the interface (None: a dead handle ends it)
        self.reserve = space_reserve(opts.buffer_size, opts.workers)
        self.disk = Outage()  # reading paused: the trace filesystem is full
        self.link = Outage()  # nothing captured: the interface went down
        self._stats_prev = (0, 0, 0)  # counters of the handles before this one
        self._stats_last = (0, 0, 0)  # this handle's counters when last read
        self.linktype = int(handle.datalink())
        series = DumpSeries if getattr(handle, "engine", "") == "libpcap" else Series
        self.series = series(
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

    def _stats(self) -> tuple[int, int, int]:
        """This handle's (received, dropped, interface-dropped) counters."""
        if self.handle is None:
            return (0, 0, 0)
        try:
            recv, drop, ifdrop = self.handle.stats()
        except pcapy.PcapError:
            return self._stats_last  # a dead handle: its last known counters
        self._stats_last = (int(recv), int(drop), int(ifdrop))
        return self._stats_last

    def _total_stats(self) -> tuple[int, int, int]:
        """Counters since the capture started, over every handle it had."""
        (r0, d0, i0), (r1, d1, i1) = self._stats_prev, self._stats()
        return r0 + r1, d0 + d1, i0 + i1

    def _close(self, reopen: bool, reason: str) -> ClosedFile | None:
        _recv, drop, ifdrop = self._stats()
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
        recv, drop, ifdrop = self._total_stats()
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
            disk_full_since_ns=self.disk.since_ns,
            disk_full_pauses=self.disk.count,
            disk_full_seconds=self.disk.seconds,
            disk_full_drops=self.disk.drops,
            link_down_since_ns=self.link.since_ns,
            link_downs=self.link.count,
            link_down_seconds=self.link.seconds,
            last_gap_start_ns=self.link.last_start_ns,
            last_gap_end_ns=self.link.last_end_ns,
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
        handle_fd = self.handle.getfd()
        poller.register(handle_fd, select.POLLIN)
        poller.register(rfd, select.POLLIN)
        now = time.monotonic()
        rotate_at = self._next_time_rotation(now)
        state_at = now
        while not flags.stop:
            if self._disk_full():
                n = 0
            else:
                try:
                    n = self._pump()
                except pcapy.PcapError as exc:
                    if self.reopen is None:
                        raise
                    poller.unregister(handle_fd)
                    if not self._wait_for_link(str(exc), rfd):
                        break  # stopped while the interface was down
                    handle_fd = self.handle.getfd()
                    poller.register(handle_fd, select.POLLIN)
                    rotate_at = self._next_time_rotation(time.monotonic())
                    continue
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
            if self.disk.since_ns is not None:
                # The handle stays readable while paused: wait on signals only.
                _wait_signal(rfd, min(wait, REOPEN_INTERVAL_S))
                continue
            for fd, _ev in poller.poll(max(int(wait * 1000) + 1, 1)):
                if fd == rfd:
                    _drain_pipe(rfd)
        self._stop()

    # -- faults: a full disk, an interface gone down ------------------------------

    def _disk_full(self) -> bool:
        """Whether reading must pause (too little free space), logging each change."""
        try:
            free = free_bytes(self.opts.directory)
        except OSError:
            return False
        disk = self.disk
        iface = self.opts.interface
        if disk.since_ns is None:
            if free >= self.reserve:
                return False
            disk.begin(time.time_ns(), time.monotonic(), self._total_stats()[1])
            log.error(
                "%s: DISK FULL: %d bytes free on the trace filesystem, below the reserve of "
                "%d: capture paused, the kernel drops packets until space is freed "
                "(bulk compress --max-disk)",
                iface,
                free,
                self.reserve,
            )
            self.write_state()
            return True
        if free < self.reserve * RESUME_FACTOR:
            return True
        length, dropped = disk.end(time.time_ns(), time.monotonic(), self._total_stats()[1])
        log.warning(
            "%s: %d bytes free again: capture resumed after a pause of %.1f s "
            "(disk full); %d packets dropped by the kernel meanwhile",
            iface,
            free,
            length,
            dropped,
        )
        self.write_state()
        return False

    def _discard_ring(self, deadline: float) -> None:
        """Stopping while the disk is full: count (never silently lose) what the
        kernel ring still holds, since there is no room to write it."""
        count = [0]

        def drop(hdr: Any, data: bytes) -> None:
            count[0] += 1

        try:
            while time.monotonic() < deadline:
                if int(self.handle.dispatch(DISPATCH_BATCH, drop)) <= 0:
                    time.sleep(0.01)
        except pcapy.PcapError:
            pass
        log.error(
            "%s: stopped while the disk is full: %d packets held in the kernel ring were "
            "discarded (no space to write them)",
            self.opts.interface,
            count[0],
        )

    def _wait_for_link(self, reason: str, rfd: int) -> bool:
        """The handle died (interface down): close the file, reopen when possible.

        Returns False when stopped by a signal before the interface came back.
        """
        link = self.link
        iface = self.opts.interface
        down_ns = time.time_ns()
        self._close(reopen=False, reason="interface down")
        total = self._total_stats()
        link.begin(down_ns, time.monotonic(), total[1])
        log.error(
            "%s: capture interrupted: %s; file closed, waiting for the interface to come back",
            iface,
            reason,
        )
        with contextlib.suppress(pcapy.PcapError):
            self.handle.close()
        self.handle = None
        self._stats_prev, self._stats_last = total, (0, 0, 0)
        self.write_state()
        state_at = time.monotonic() + self.opts.state_interval
        last_error = ""
        while True:
            _wait_signal(rfd, REOPEN_INTERVAL_S)
            if self.flags.stop:
                break
            if time.monotonic() >= state_at:
                self.write_state()  # status sees a live capture waiting, not a stalled one
                state_at = time.monotonic() + self.opts.state_interval
            try:
                handle = self.reopen() if self.reopen is not None else None
            except BulkError as exc:
                if str(exc) != last_error:
                    last_error = str(exc)
                    log.info("%s: not yet: %s", iface, exc)
                continue
            if handle is None:
                break
            self.handle = handle
            self.series.handle = handle
            self.series.set_base_stats(0, 0)
            self._open_next()
            length, _dropped = link.end(time.time_ns(), time.monotonic(), total[1])
            cur = self.series.current
            log.warning(
                "%s: interface back: capture resumed into %s after a gap of %.1f s "
                "(nothing captured from %s to %s)",
                iface,
                os.path.basename(cur.path) if cur else "?",
                length,
                _iso(link.last_start_ns),
                _iso(link.last_end_ns),
            )
            self.write_state()
            return True
        return False

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
        if self.disk.since_ns is not None and self.handle is not None:
            self._discard_ring(deadline)
        while self.series.current is not None and time.monotonic() < deadline:
            if self.disk.since_ns is not None:
                break
            try:
                if self._pump() == 0:
                    time.sleep(0.01)
            except pcapy.PcapError:
                break
        self._close(reopen=False, reason="stop")
        self.write_state(stopping=True)


def _wait_signal(rfd: int, seconds: float) -> None:
    """Sleep up to ``seconds``, waking up at once on a signal."""
    poller = select.poll()
    poller.register(rfd, select.POLLIN)
    if poller.poll(max(int(seconds * 1000), 1)):
        _drain_pipe(rfd)


def _iso(ns: int | None) -> str:
    if ns is None:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + (
        f".{ns % 1_000_000_000 // 1_000_000:03d}Z"
    )


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
    reopen: Callable[[], Any] | None = None,
) -> Worker:
    """Run one worker to the end; its archiver (started before the handle was
    opened) repairs ``repair`` first. The caller stops the archiver. ``reopen``
    gives a new handle when the interface comes back after going down."""
    try:
        w = Worker(opts, handle, worker, archiver, joined_ns, reopen=reopen)
        for path in repair:
            archiver.repair(path, w.linktype, opts.snaplen)
        w.run(ready)
    except BulkError:
        raise
    except OSError as exc:
        raise CaptureError(f"{opts.interface}: {exc}") from None
    return w
