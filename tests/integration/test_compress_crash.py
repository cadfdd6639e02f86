"""`bulk compress` killed at every step, and by a real SIGKILL: no trace is ever lost,
no partial file ever appears under a trace name, and the next run finishes the job."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bulk.compress.safe import CRASH_ENV, CRASH_POINTS
from bulk.trace.seekable import SeekableTrace
from tests.compress_data import make_pcap
from tests.conftest import BULK, DATA, run_bulk

pytestmark = pytest.mark.integration

NAMES = ["zeek-smtp.pcap", "ssh-dups.pcap", "irc-dcc-send.pcapng", "pptp.pcap"]


def fresh_archive(d: Path) -> dict[str, bytes]:
    d.mkdir()
    originals = {}
    for name in NAMES:
        shutil.copy2(DATA / name, d / name)
    make_pcap(d / "big.pcap", 600_000, seed=7)
    for p in d.iterdir():
        originals[p.name] = p.read_bytes()
    return originals


def check_nothing_lost(d: Path, originals: dict[str, bytes]) -> None:
    """Every original is there intact, or as a compressed file that decompresses to
    it (or both); every visible file is one of those; nothing else under a trace name."""
    visible = {p.name for p in d.iterdir() if not p.name.startswith(".")}
    for name, data in originals.items():
        plain = d / name
        comp = d / (name + ".zst")
        assert plain.exists() or comp.exists(), f"{name} lost"
        if plain.exists():
            assert plain.read_bytes() == data, f"{name} changed"
        if comp.exists():
            out = subprocess.run(["zstd", "-dc", str(comp)], capture_output=True, check=True)
            assert out.stdout == data, f"{comp.name} is not {name}"
        visible -= {name, name + ".zst"}
    assert visible == set(), f"unexpected files {visible}"


def _read_all(path: Path) -> bytes:
    with SeekableTrace.open(str(path)) as st:
        return st.read_frames(0, len(st.frames))


def check_finished(d: Path, originals: dict[str, bytes]) -> None:
    names = sorted(p.name for p in d.iterdir() if p.name != ".bulk")
    assert names == sorted(n + ".zst" for n in originals)
    for name, data in originals.items():
        assert _read_all(d / (name + ".zst")) == data


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_at_each_step(tmp_path: Path, point: str) -> None:
    d = tmp_path / "archive"
    originals = fresh_archive(d)
    env = {**os.environ, CRASH_ENV: point}
    proc = subprocess.run(
        [*BULK, "compress", "--dir", str(d), "--frame-size", "64K"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 137, proc.stderr.decode()
    check_nothing_lost(d, originals)
    # The next run sweeps, finishes and compresses the rest.
    proc2 = run_bulk("compress", "--dir", d, "--frame-size", "64K")
    assert proc2.returncode == 0, proc2.stderr.decode()
    check_finished(d, originals)
    if point in ("after-write", "after-fsync", "after-verify"):
        assert b"removed leftover temporary file" in proc2.stdout
    if point in ("after-rename", "after-catalogue"):
        assert b"finished an interrupted compression" in proc2.stdout


def test_sigkill_mid_write(tmp_path: Path) -> None:
    """A real SIGKILL while the compressed copy is being written (slow settings so
    the kill lands mid-file), then again at a few moments of a second run."""
    d = tmp_path / "archive"
    d.mkdir()
    make_pcap(d / "huge.pcap", 24_000_000, seed=3)
    originals = {"huge.pcap": (d / "huge.pcap").read_bytes()}
    tmp_name = d / ".huge.pcap.zst.partial"
    args = [
        *BULK,
        "compress",
        "--dir",
        str(d),
        "--level",
        "19",
        "--threads",
        "1",
        "--frame-size",
        "256K",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if tmp_name.exists() and tmp_name.stat().st_size > 100_000:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the temporary file never grew")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert tmp_name.exists()  # killed mid-write: a partial file, under a hidden name only
    check_nothing_lost(d, originals)
    # Kill the recovery runs at growing delays; whatever happens, nothing is lost.
    for delay in (0.05, 0.3, 1.0):
        p = subprocess.Popen(
            [*BULK, "compress", "--dir", str(d), "--threads", "1", "--frame-size", "256K"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        p.kill()
        p.wait(timeout=30)
        check_nothing_lost(d, originals)
    proc2 = run_bulk("compress", "--dir", d)
    assert proc2.returncode == 0, proc2.stderr.decode()
    check_finished(d, originals)


def test_two_runs_do_not_collide(tmp_path: Path) -> None:
    d = tmp_path / "archive"
    originals = fresh_archive(d)
    (d / ".bulk").mkdir(exist_ok=True)
    with open(d / ".bulk" / "compress.lock", "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        proc = run_bulk("compress", "--dir", d)
        assert proc.returncode == 0
        assert b"another bulk compress is running" in proc.stdout
        assert {p.name for p in d.iterdir() if p.name != ".bulk"} == set(originals)
    proc = run_bulk("compress", "--dir", d)
    assert proc.returncode == 0, proc.stderr.decode()
    check_finished(d, originals)
