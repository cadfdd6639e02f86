"""The archive's advisory locks against util-linux flock(1) on the same file."""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bulk.archive.locks import is_locked, try_lock
from tests.conftest import require_tool


def _flock_free(path: Path, shared: bool) -> bool:
    """Whether flock(1) gets the lock (shared or exclusive) without waiting."""
    cmd = [require_tool("flock"), "--nonblock", "--conflict-exit-code", "9"]
    proc = subprocess.run([*cmd, *(["--shared"] if shared else []), str(path), "true"], check=False)
    assert proc.returncode in (0, 9)
    return proc.returncode == 0


@contextmanager
def _held(path: Path, how: str) -> Iterator[None]:
    """``path`` held by another open file: exclusively, shared (as a probe
    would), or not at all."""
    if how == "free":
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if how == "exclusive" else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["free", "shared", "exclusive"])
def test_probe_and_take_agree_with_flock(tmp_path: Path, how: str) -> None:
    path = tmp_path / "x.lock"
    path.write_bytes(b"")
    with _held(path, how):
        exclusive_free = _flock_free(path, shared=False)
        assert is_locked(str(path)) == (not _flock_free(path, shared=True))
        fd = try_lock(str(path))
        assert (fd is not None) == exclusive_free
        if fd is not None:  # held now: flock(1) gets it neither way, and the probe sees it
            try:
                assert not _flock_free(path, shared=True)
                assert is_locked(str(path))
            finally:
                os.close(fd)
    assert not is_locked(str(path)) and _flock_free(path, shared=False)


def test_try_lock_creates_and_a_missing_file_is_not_locked(tmp_path: Path) -> None:
    path = tmp_path / "new.lock"
    assert not is_locked(str(path))
    fd = try_lock(str(path))
    assert fd is not None and path.exists()
    os.close(fd)
    with pytest.raises(FileNotFoundError):
        try_lock(str(tmp_path / "no" / "such.lock"))
