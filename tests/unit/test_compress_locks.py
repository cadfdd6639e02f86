"""compress's run lock and busy probe, now bulk.archive.locks underneath."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from bulk.compress.safe import is_busy, lock_run
from bulk.errors import ArchiveError


def test_busy_only_under_an_exclusive_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"")
    assert not is_busy(str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        # Another run's probe in the middle of probing: not an owner.
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert not is_busy(str(path))
        # A run compressing it.
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert is_busy(str(path))
    finally:
        os.close(fd)
    assert not is_busy(str(path))
    assert not is_busy(str(tmp_path / "missing.pcap"))


def test_run_lock_taken_once(tmp_path: Path) -> None:
    first = lock_run(str(tmp_path))
    assert first is not None
    try:
        assert (tmp_path / ".bulk" / "compress.lock").exists()
        assert lock_run(str(tmp_path)) is None
    finally:
        os.close(first)
    again = lock_run(str(tmp_path))
    assert again is not None
    os.close(again)


def test_run_lock_unwritable_is_an_archive_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(ArchiveError, match="cannot take the compress lock"):
        lock_run(str(blocker))  # .bulk cannot be made under a plain file
