"""``bulk rotate``: make the running capture switch files, or start one (the cron job).

The running capture is found by its pid file, trusted only when locked and
when psutil confirms the pid is that ``bulk capture`` (same start time), so a
stale pid file or a pid reused by another process never receives a signal.
A capture started here is detached (its own session, stdin from /dev/null)
and logs to ``DIR/.bulk/capture-IFACE.log``; it takes its options from
bulk.toml like any other ``bulk capture``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from bulk.archive.naming import check_interface_name, state_dir
from bulk.archive.pidfile import PidInfo, running_capture
from bulk.capture.state import LiveState, worker_states
from bulk.capture.supervisor import prepare_directory
from bulk.errors import CaptureError

START_TIMEOUT_S = 15.0
ROTATE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Outcome:
    interface: str
    action: str  # "rotated", "signalled", "started"
    pid: int
    detail: str

    def __str__(self) -> str:
        return f"{self.action} capture on {self.interface} (pid {self.pid}): {self.detail}"


def log_path(directory: str, interface: str) -> str:
    return os.path.join(state_dir(directory), f"capture-{interface}.log")


def rotate_or_start(directory: str, interface: str) -> Outcome:
    """SIGHUP the running capture of ``interface``, or start one when none runs."""
    # The name becomes part of the pid, state and log file names.
    check_interface_name(interface)
    info = running_capture(directory, interface)
    if info is not None:
        return rotate_running(directory, info)
    return start_detached(directory, interface)


def rotate_running(directory: str, info: PidInfo) -> Outcome:
    """SIGHUP and wait (a few seconds) until every worker reports the switch."""
    before = {s.worker: s.rotations for s in _current_states(directory, info)}
    try:
        os.kill(info.pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CaptureError(f"capture on {info.interface} (pid {info.pid}) just ended") from None
    deadline = time.monotonic() + ROTATE_TIMEOUT_S
    while time.monotonic() < deadline:
        states = _current_states(directory, info)
        if states and all(s.rotations > before.get(s.worker, -1) for s in states):
            files = ", ".join(s.current_file or "?" for s in states)
            return Outcome(info.interface, "rotated", info.pid, f"now writing {files}")
        time.sleep(0.05)
    return Outcome(
        info.interface, "signalled", info.pid, "SIGHUP sent, the switch not confirmed yet"
    )


def _current_states(directory: str, info: PidInfo) -> list[LiveState]:
    return [
        s
        for s in worker_states(directory, info.interface)
        if s.started_ns >= info.started_ns - 1_000_000_000
    ]


def start_detached(directory: str, interface: str) -> Outcome:
    """Start ``bulk capture`` in the background and wait until it captures."""
    directory = os.path.abspath(directory)
    prepare_directory(directory)
    log = log_path(directory, interface)
    state_dir(directory, create=True)
    cmd = [sys.executable, "-m", "bulk", "capture", "-i", interface, "--dir", directory]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise CaptureError(
                f"capture on {interface} failed to start: {_last_line(log)} (log: {log})"
            )
        info = running_capture(directory, interface)
        if info is not None and info.pid == proc.pid and _current_states(directory, info):
            return Outcome(interface, "started", proc.pid, f"logging to {log}")
        time.sleep(0.05)
    return Outcome(
        interface, "started", proc.pid, f"not capturing yet after {START_TIMEOUT_S:g} s; see {log}"
    )


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(os.path.getsize(path) - 4096, 0))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "no output"
