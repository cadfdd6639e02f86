"""Pid files of running captures, trusted only after checking the process.

A capture holds ``DIR/.bulk/capture-IFACE.pid`` open with an exclusive
``flock`` for its whole life. The file's first line is the pid (as daemons
write it); the second a JSON line with the process start time, interface and
archive directory. Another process believes a capture runs only when:

- the lock is held (a crashed capture's lock went with it), and
- psutil finds that pid alive with the same start time (so a pid reused by
  another program after a reboot or a wrap-around is not trusted), running
  ``bulk capture``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass

import psutil

from bulk.archive.locks import is_locked, try_lock
from bulk.archive.naming import state_dir
from bulk.errors import ArchiveError, CaptureError

PID_PREFIX = "capture-"
PID_SUFFIX = ".pid"
_START_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class PidInfo:
    pid: int
    create_time: float  # psutil's process start time (seconds since the epoch)
    interface: str
    directory: str
    started_ns: int  # when the capture started


def pidfile_path(directory: str, interface: str) -> str:
    return os.path.join(state_dir(directory), f"{PID_PREFIX}{interface}{PID_SUFFIX}")


class PidFile:
    """The pid file of the capture running in this process (held locked until released)."""

    def __init__(self, path: str, fd: int, info: PidInfo) -> None:
        self.path = path
        self.info = info
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str, interface: str, started_ns: int) -> PidFile:
        """Lock and write the pid file; CaptureError when a capture already holds it."""
        path = pidfile_path(directory, interface)
        state_dir(directory, create=True)
        try:
            fd = try_lock(path, 0o644)
        except OSError as exc:
            raise ArchiveError(f"{path}: cannot open pid file: {exc.strerror}") from None
        if fd is None:
            other = read_pidfile(path)
            who = f" (pid {other.pid})" if other else ""
            raise CaptureError(
                f"a capture on {interface} into {directory} is already running{who}"
            ) from None
        me = psutil.Process()
        info = PidInfo(os.getpid(), me.create_time(), interface, directory, started_ns)
        text = f"{info.pid}\n{json.dumps(asdict(info))}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
        os.set_inheritable(fd, False)
        return cls(path, fd, info)

    def release(self) -> None:
        """Remove and unlock (only the owner calls this)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def close_in_child(self) -> None:
        """In a forked child: drop the inherited descriptor without touching the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_pidfile(path: str) -> PidInfo | None:
    """What a pid file says, unchecked; None when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
            second = f.readline()
    except OSError:
        return None
    try:
        pid = int(first.strip())
    except ValueError:
        return None
    try:
        meta = json.loads(second) if second.strip() else {}
        return PidInfo(
            pid=pid,
            create_time=float(meta.get("create_time", 0.0)),
            interface=str(meta.get("interface", "")),
            directory=str(meta.get("directory", "")),
            started_ns=int(meta.get("started_ns", 0)),
        )
    except (ValueError, TypeError, AttributeError):
        return PidInfo(pid, 0.0, "", "", 0)


def verify(info: PidInfo) -> bool:
    """True when ``info.pid`` is the capture that wrote the pid file (not a reused pid)."""
    try:
        proc = psutil.Process(info.pid)
        if abs(proc.create_time() - info.create_time) > _START_TOLERANCE_S:
            return False
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "bulk" in cmdline and "capture" in cmdline


def running_capture(directory: str, interface: str) -> PidInfo | None:
    """The running capture of ``interface`` into ``directory``, or None (stale or absent)."""
    path = pidfile_path(directory, interface)
    info = read_pidfile(path)
    if info is None or not is_locked(path) or not verify(info):
        return None
    return info


def captures_in(directory: str) -> list[str]:
    """Interfaces that have a pid file in the archive (running or stale)."""
    try:
        names = os.listdir(state_dir(directory))
    except OSError:
        return []
    return sorted(
        n[len(PID_PREFIX) : -len(PID_SUFFIX)]
        for n in names
        if n.startswith(PID_PREFIX) and n.endswith(PID_SUFFIX)
    )
