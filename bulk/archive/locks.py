"""Advisory locks (``flock``) on archive files: held by one owner, probed by others.

An owner opens a file and holds an exclusive lock on it for as long as it works
(a capture its pid file; a compress run ``DIR/.bulk/compress.lock`` and the
trace it rewrites). The lock goes with the owner's process, so a crash never
leaves a stale one behind, whatever files it leaves.
"""

from __future__ import annotations

import fcntl
import os


def try_lock(path: str, mode: int = 0o640) -> int | None:
    """Open ``path`` (created with ``mode`` if missing) and take its exclusive lock
    without waiting: the descriptor, which holds the lock until it is closed, or
    None when another holder has it. An OSError from opening is the caller's."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_locked(path: str) -> bool:
    """True when an owner (this process too, through another descriptor) holds
    ``path``'s exclusive lock; False when it is free, missing or unreadable. The
    probe asks for a shared lock, so probes running at the same time (two status
    commands, say) never mistake each other for an owner."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False
