"""The live state file of a capture worker, rewritten atomically every few seconds.

``DIR/.bulk/capture-IFACE.wK.json`` holds counters and the current file, so
``bulk status`` (or any monitoring script) reads them without talking to the
capture process. It is replaced by rename, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

from bulk.archive.naming import state_dir

STATE_PREFIX = "capture-"
log = logging.getLogger("bulk.capture")


@dataclass(frozen=True)
class LiveState:
    """One worker's figures. Counters run since the worker started."""

    pid: int
    interface: str
    worker: int
    workers: int
    started_ns: int
    updated_ns: int
    packets: int  # written to files
    bytes: int  # bytes of trace files written (headers included)
    received: int  # libpcap ps_recv
    drops: int  # libpcap ps_drop: the ring was full
    ifdrops: int  # libpcap ps_ifdrop: dropped by the interface
    pps: float  # packets/s over the last interval
    bps: float  # trace bytes/s over the last interval
    current_file: str | None
    current_packets: int
    current_bytes: int
    current_opened_ns: int | None
    files_closed: int
    rotations: int  # rotations done (time, size or SIGHUP)
    last_rotation_ns: int | None
    rotate_seconds: float | None
    rotate_bytes: int | None
    stopping: bool = False
    # Outages (bulk.capture.guard): reading paused on a full disk, interface down.
    disk_full_since_ns: int | None = None  # paused now, since then
    disk_full_pauses: int = 0
    disk_full_seconds: float = 0.0  # paused, in ended pauses
    disk_full_drops: int = 0  # packets the kernel dropped during ended pauses
    link_down_since_ns: int | None = None  # the interface is down now, since then
    link_downs: int = 0
    link_down_seconds: float = 0.0  # down, in ended outages
    last_gap_start_ns: int | None = None  # the last time capture stopped for a link down
    last_gap_end_ns: int | None = None  # ... and resumed (None: not yet)


def state_path(directory: str, interface: str, worker: int) -> str:
    return os.path.join(state_dir(directory), f"{STATE_PREFIX}{interface}.w{worker}.json")


def write_state(directory: str, state: LiveState) -> None:
    path = state_path(directory, state.interface, state.worker)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(state), f)
    os.replace(tmp, path)


def read_state(path: str) -> LiveState | None:
    try:
        with open(path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    known = {f.name for f in fields(LiveState)}
    try:
        return LiveState(**{k: v for k, v in data.items() if k in known})
    except TypeError:
        return None


def worker_states(directory: str, interface: str) -> list[LiveState]:
    """The state files of every worker of an interface, by worker number."""
    prefix = f"{STATE_PREFIX}{interface}.w"
    found = []
    try:
        names = os.listdir(state_dir(directory))
    except OSError:
        return []
    for name in names:
        if name.startswith(prefix) and name.endswith(".json"):
            state = read_state(os.path.join(state_dir(directory), name))
            if state is not None and state.interface == interface:
                found.append(state)
    return sorted(found, key=lambda s: s.worker)


def remove_states(directory: str, interface: str) -> None:
    """Forget the state files of an interface (a capture starting afresh)."""
    for state in worker_states(directory, interface):
        with contextlib.suppress(OSError):
            os.unlink(state_path(directory, interface, state.worker))


class StateWriter:
    """Writes the latest state from a thread of its own.

    Replacing a file needs the file system's journal, which can stall for a
    long moment while a lot of trace data is being written out; the capture
    loop hands the state over and goes on draining the ring. Only the newest
    state is kept.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._cond = threading.Condition()
        self._pending: LiveState | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="bulk-state", daemon=True)
        self._thread.start()

    def submit(self, state: LiveState) -> None:
        with self._cond:
            self._pending = state
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                state, self._pending = self._pending, None
                closing = self._closing
            if state is not None:
                try:
                    write_state(self.directory, state)
                except OSError as exc:
                    log.warning("cannot write the live state: %s", exc.strerror)
            if closing and state is None:
                return
