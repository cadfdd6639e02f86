"""Helpers of the live fault scenarios: archive listings, oracles, waiting."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil

from bulk.archive.catalogue import Catalogue
from bulk.archive.naming import parse_name

REPO = Path(__file__).resolve().parents[2]


def finals(d: Path, worker: int | None = None) -> list[Path]:
    """Closed (uncompressed) archive files of every series (or of one worker's),
    in (worker, sequence) order."""
    found = []
    for p in d.glob("bulk-*.pcap"):
        name = parse_name(p.name)
        assert name is not None, p
        if worker is None or name.worker == worker:
            found.append((name.worker, name.seq, p))
    return [p for _w, _s, p in sorted(found)]


def opens(d: Path) -> list[Path]:
    return sorted(d.glob("*.pcap.open"))


def digest(p: Path) -> tuple[int, int, str]:
    return p.stat().st_ino, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()


def wait_archivers(d: Path, timeout: float = 60) -> None:
    """Processes still working on ``d`` (a killed capture's archiver finishes its
    jobs alone): wait until they are gone."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(d) in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
                proc.wait(timeout)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            continue


def check_catalogue(d: Path, counts: dict[str, int]) -> None:
    """Rows and files agree: every closed (or compressed) file has one row in that
    state with the packet count tcpdump read and its size; no row names a file
    that is not there."""
    with Catalogue.open(str(d)) as cat:
        rows = {r.name: r for r in cat.files()}
    on_disk = {p.name for p in d.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert set(rows) <= on_disk, f"rows without a file: {sorted(set(rows) - on_disk)}"
    for name, packets in counts.items():
        rec = rows.get(name)
        assert rec is not None, f"{name}: no catalogue row"
        want = "compressed" if name.endswith((".zst", ".gz")) else "closed"
        assert rec.state == want, (name, rec.state)
        assert (rec.packets, rec.size) == (packets, (d / name).stat().st_size), name


def traces(d: Path) -> list[Path]:
    """Closed traces, compressed or not, in (worker, sequence) order."""
    found = []
    for p in d.iterdir():
        name = parse_name(p.name)
        if name is not None and not name.is_open and not p.name.endswith(".idx"):
            found.append((name.worker, name.seq, p))
    return [p for _w, _s, p in sorted(found)]


def wait_for(predicate: object, timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return bool(predicate())  # type: ignore[operator]


class Loop:
    """Run a command again and again in a thread until stopped (as cron would,
    faster); keep every result for the test to check."""

    def __init__(self, argv: list[str], every: float) -> None:
        self.argv, self.every = argv, every
        self.results: list[subprocess.CompletedProcess[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append(
                subprocess.run(
                    self.argv, capture_output=True, text=True, timeout=300, check=False, cwd=REPO
                )
            )
            self._stop.wait(self.every)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(300)
