"""Pid files trusted only when checked, and what bulk status reports from the files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulk.archive.catalogue import Catalogue, FileRecord
from bulk.archive.pidfile import PidFile, pidfile_path, read_pidfile, running_capture
from bulk.capture.state import LiveState, write_state
from bulk.capture.status import collect, to_json, to_prometheus, to_text
from bulk.errors import CaptureError

ROOT = Path(__file__).parents[2]


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the pid file of 'eth9', named like a capture."""
    code = (
        "import sys, time\n"
        "from bulk.archive.pidfile import PidFile\n"
        f"PidFile.acquire({str(tmp_path)!r}, 'eth9', 1)\n"
        "print('ok', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "bulk", "capture"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
    yield proc
    proc.kill()
    proc.wait()


def test_a_locked_live_capture_is_trusted_until_it_dies(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    info = running_capture(str(tmp_path), "eth9")
    assert info is not None and info.pid == holder.pid
    with pytest.raises(CaptureError, match=f"already running \\(pid {holder.pid}\\)"):
        PidFile.acquire(str(tmp_path), "eth9", 2)
    holder.kill()
    holder.wait()
    # The file is still there, but its lock went with the process.
    assert read_pidfile(pidfile_path(str(tmp_path), "eth9")) is not None
    assert running_capture(str(tmp_path), "eth9") is None
    fresh = PidFile.acquire(str(tmp_path), "eth9", 3)  # a stale pid file is taken over
    assert read_pidfile(fresh.path).pid == os.getpid()  # type: ignore[union-attr]
    fresh.release()
    assert not os.path.exists(fresh.path)


def test_a_pid_with_another_start_time_is_not_trusted(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    path = pidfile_path(str(tmp_path), "eth9")
    lines = Path(path).read_text().splitlines()
    meta = json.loads(lines[1])
    meta["create_time"] -= 3600  # as if the pid had been reused since
    Path(path).write_text(f"{lines[0]}\n{json.dumps(meta)}\n")
    assert running_capture(str(tmp_path), "eth9") is None


def test_this_process_is_not_a_capture(tmp_path: Path) -> None:
    mine = PidFile.acquire(str(tmp_path), "eth8", 1)  # locked, right start time...
    try:
        assert running_capture(str(tmp_path), "eth8") is None  # ...but not 'bulk capture'
    finally:
        mine.release()


def _state(iface: str, worker: int, **kw: object) -> LiveState:
    now = time.time_ns()
    base: dict[str, object] = {
        "pid": os.getpid(),
        "interface": iface,
        "worker": worker,
        "workers": 2,
        "started_ns": now - 10**9,
        "updated_ns": now,
        "packets": 100,
        "bytes": 5000,
        "received": 100,
        "drops": 3,
        "ifdrops": 1,
        "pps": 10.0,
        "bps": 500.5,
        "current_file": f"bulk-20260101T000000Z-{iface}-w{worker}-000002.pcap.open",
        "current_packets": 4,
        "current_bytes": 88,
        "current_opened_ns": now,
        "files_closed": 1,
        "rotations": 1,
        "last_rotation_ns": now,
        "rotate_seconds": None,
        "rotate_bytes": None,
    }
    base.update(kw)
    return LiveState(**base)  # type: ignore[arg-type]


def test_status_of_a_running_fanout_capture(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    d = tmp_path
    started = read_pidfile(pidfile_path(str(d), "eth9")).started_ns  # type: ignore[union-attr]
    for w in (0, 1):
        write_state(str(d), _state("eth9", w, started_ns=started + 1))
    (d / "bulk-20260101T000000Z-eth9-000001.pcap").write_bytes(b"x" * 100)
    with Catalogue.open(str(d)) as cat:
        cat.add_file(
            FileRecord(
                "bulk-20260101T000000Z-eth9-000001.pcap",
                "closed",
                interface="eth9",
                packets=7,
                drops=2,
                first_ns=10**18,
                last_ns=10**18 + 5,
            )
        )
    status = collect(str(d))
    [c] = status.captures
    assert c.running and c.pid == holder.pid and c.workers == 2
    assert (c.packets, c.drops, c.ifdrops, c.pps) == (200, 6, 2, 20.0)
    assert status.running and status.archive.files == 1 and status.archive.bytes == 100
    assert status.archive.oldest_ns == 10**18
    doc = to_json(status)
    assert doc["archive"]["recent"][0]["drops"] == 2
    text = to_text(status)
    assert "capture eth9: running" in text and "2 workers" in text and "7 packets, 2 drops" in text

    prom = to_prometheus(status)
    seen: set[str] = set()
    for line in prom.splitlines():
        if line.startswith("# HELP "):
            seen.add(line.split()[2])
            continue
        if line.startswith("# TYPE "):
            assert line.split()[3] in ("gauge", "counter")
            continue
        m = re.fullmatch(
            r'([a-z_]+)\{(\w+)="((?:[^"\\]|\\.)*)"\} (-?[0-9.]+(?:e[+-]?[0-9]+)?)', line
        )
        assert m, line
        assert m.group(1) in seen  # HELP and TYPE come first
    assert 'bulk_capture_up{interface="eth9"} 1' in prom
    assert 'bulk_capture_drops_total{interface="eth9"} 6' in prom
    assert 'bulk_archive_files{directory="' in prom


def test_status_after_the_capture_died(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    write_state(str(tmp_path), _state("eth9", 0))
    holder.kill()
    holder.wait()
    status = collect(str(tmp_path))
    [c] = status.captures
    assert not c.running and not status.running
    assert "capture eth9: NOT running" in to_text(status)
    prom = to_prometheus(status)
    assert 'bulk_capture_up{interface="eth9"} 0' in prom
    assert "bulk_capture_packets_total" not in prom  # no live counters of a dead capture


def test_label_values_are_escaped(tmp_path: Path) -> None:
    d = tmp_path / 'odd "dir"\\name'
    d.mkdir()
    prom = to_prometheus(collect(str(d)))
    assert 'directory="' + str(tmp_path).replace("\\", "\\\\") + '/odd \\"dir\\"\\\\name"' in prom
