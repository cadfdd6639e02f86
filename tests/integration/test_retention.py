"""Retention on a small filesystem mounted by the test (tmpfs with size=): the
budget is met, the newest traces survive, the open file is never touched."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import bulk.compress.run as run_mod
from tests.compress_data import make_pcap
from tests.conftest import run_bulk

pytestmark = pytest.mark.integration
DAY = 86_400


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"fs-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0750", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def archive_name(i: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(1_700_000_000 + 3600 * i))
    return f"bulk-{stamp}-eth0-{i:06d}.pcap"


def populate(d: Path, count: int, size: int, now: float) -> tuple[list[Path], Path]:
    """``count`` closed traces, one hour apart (file times), the oldest first, plus an
    open file that is older than all of them (it must survive anyway)."""
    files = []
    for i in range(count):
        p = d / archive_name(i + 1)
        make_pcap(p, size, seed=i + 1, random_payload=1.0)
        t = now - (count - i) * 3600
        os.utime(p, (t, t))
        files.append(p)
    open_file = d / (archive_name(count + 1) + ".open")
    make_pcap(open_file, size, seed=99)
    t = now - 10 * DAY
    os.utime(open_file, (t, t))
    return files, open_file


def allocated(d: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in d.iterdir() if p.is_file())


def fs_used_percent(d: Path) -> float:
    st = os.statvfs(d)
    return 100.0 * (st.f_blocks - st.f_bfree) / st.f_blocks


def survivors(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file())


def assert_newest_survive(files: list[Path], d: Path) -> None:
    """What was deleted is a prefix of the files sorted by age: the oldest ones."""
    kept = [p.name in {q.name.removesuffix(".zst") for q in d.iterdir()} for p in files]
    assert kept == sorted(kept), f"not oldest-first: {kept}"
    assert kept[-1], "the newest closed trace was deleted"


def test_max_disk_size_budget(small_fs: Path) -> None:
    files, open_file = populate(small_fs, 10, 1_000_000, time.time())
    open_before = (open_file.read_bytes(), open_file.stat().st_mtime_ns)
    proc = run_bulk("compress", "--dir", small_fs, "--max-disk", "5M", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    traces = sum(p.stat().st_blocks * 512 for p in small_fs.iterdir() if p.is_file())
    assert traces <= 5 * 1024 * 1024
    assert report["deleted"], "a budget below the archive size must delete something"
    for d in report["deleted"]:
        assert d["reason"].startswith("--max-disk 5.0M")
        assert d["path"].endswith(".pcap.zst")
    assert_newest_survive(files, small_fs)
    assert (open_file.read_bytes(), open_file.stat().st_mtime_ns) == open_before


def test_max_disk_percent_budget(small_fs: Path) -> None:
    files, open_file = populate(small_fs, 12, 1_100_000, time.time())
    assert fs_used_percent(small_fs) > 80
    open_before = open_file.read_bytes()
    # The dry run plans, and changes nothing.
    before = survivors(small_fs)
    dry = run_bulk("compress", "--dir", small_fs, "--max-disk", "50%", "--dry-run")
    assert dry.returncode == 0, dry.stderr.decode()
    assert b"would delete" in dry.stdout and b"would compress" in dry.stdout
    assert survivors(small_fs) == before
    proc = run_bulk("compress", "--dir", small_fs, "--max-disk", "50%")
    assert proc.returncode == 0, proc.stderr.decode()
    assert fs_used_percent(small_fs) <= 50
    assert b"deleted " in proc.stdout and b"--max-disk 50%" in proc.stdout
    assert_newest_survive(files, small_fs)
    assert open_file.read_bytes() == open_before


def test_keep_days(small_fs: Path) -> None:
    now = time.time()
    ages = [12, 9, 4, 2, 0.5]
    paths = []
    for i, age in enumerate(ages):
        p = small_fs / archive_name(i + 1)
        make_pcap(p, 100_000, seed=i)
        os.utime(p, (now - age * DAY, now - age * DAY))
        paths.append(p)
    open_file = small_fs / (archive_name(9) + ".open")
    make_pcap(open_file, 100_000, seed=9)
    os.utime(open_file, (now - 30 * DAY, now - 30 * DAY))
    proc = run_bulk("compress", "--dir", small_fs, "--keep-days", "7", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    deleted = sorted(Path(d["path"]).name for d in report["deleted"])
    assert deleted == sorted(p.name + ".zst" for p, a in zip(paths, ages, strict=True) if a > 7)
    assert all("older than --keep-days 7" in d["reason"] for d in report["deleted"])
    assert survivors(small_fs) == sorted(
        [open_file.name] + [p.name + ".zst" for p, a in zip(paths, ages, strict=True) if a <= 7]
    )


def test_budget_that_cannot_be_met_keeps_the_open_file(small_fs: Path) -> None:
    _files, open_file = populate(small_fs, 3, 500_000, time.time())
    proc = run_bulk("compress", "--dir", small_fs, "--max-disk", "100K")
    assert proc.returncode == 0, proc.stderr.decode()
    assert survivors(small_fs) == [open_file.name]
    assert b"cannot be met" in proc.stdout


def test_disk_full_while_compressing_keeps_the_original(small_fs: Path) -> None:
    """No room for the compressed copy: it is not even started (a compression
    must not fill the disk under a live capture); the original stays, no
    temporary file is left behind, the run says so and exits 1."""
    big = small_fs / archive_name(1)
    make_pcap(big, 9_000_000, seed=5, random_payload=1.0)  # 9 MB of 16: no room for a copy
    data = big.read_bytes()
    proc = run_bulk("compress", "--dir", small_fs, "--keep-days", "1000")
    assert proc.returncode == 1
    assert b"not enough free space" in proc.stdout
    assert big.read_bytes() == data
    assert survivors(small_fs) == [big.name]
    assert [p.name for p in small_fs.iterdir() if p.name.startswith(".") and p.is_file()] == []


def test_disk_filling_up_mid_write_keeps_the_original(
    small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free-space check passed but the disk fills up while writing (ENOSPC):
    the partial copy is removed, the original stays."""
    big = small_fs / archive_name(1)
    make_pcap(big, 9_000_000, seed=6, random_payload=1.0)
    data = big.read_bytes()
    monkeypatch.setattr(run_mod, "_short_of_space", lambda path: None)
    lines: list[str] = []
    report = run_mod.run(run_mod.RunOptions(str(small_fs)), lines.append)
    assert [p for p, _e in report.failed] == [str(big)]
    assert "no space left" in report.failed[0][1]
    assert big.read_bytes() == data
    assert survivors(small_fs) == [big.name]
    assert [p.name for p in small_fs.iterdir() if p.name.startswith(".") and p.is_file()] == []
