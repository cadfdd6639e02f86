"""Compression, retention and analysis running while capture is under load.

Cron jobs on a sensor run while the capture writes: ``bulk compress`` with
``--max-disk`` (compressing, then deleting the oldest traces), ``bulk rotate``
switching files, and analyses reading the archive as it changes under them.
With numbered frames (tests/faults/traffic.py) the archive is checked packet
by packet: nothing is lost at all (kernel drops 0), retention deleted only the
oldest traces so what is left is one unbroken run of numbers ending with the
last packet sent, every trace reads in tcpdump (through zstdcat when
compressed), no temporary or open file is left, and the catalogue matches
the files. The analyses exit 0 (or 3 for the open file's cut tail) and never
print a traceback, even when retention deletes a file they are about to read.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bulk.compress.safe import CRASH_ENV, CRASH_POINTS, RETENTION_CRASH_POINTS
from tests.conftest import tcpdump_count
from tests.faults.harness import LONG
from tests.faults.live import Loop, check_catalogue, traces, wait_archivers
from tests.faults.traffic import packet_numbers, tcpreplay_sent, write_numbered_pcap
from tests.integration.vethnet import LiveCapture, VethPair, live_pair

pytestmark = pytest.mark.integration
REPO = Path(__file__).parents[2]
RATE = 5000
PACKETS = 60000 if LONG else 30000


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    yield from live_pair("tcpreplay", "tcpdump", "zstdcat")


def bulk(*args: str) -> list[str]:
    return [sys.executable, "-m", "bulk", *args]


@dataclass
class Scenario:
    d: Path
    sent: int
    log: str
    loops: dict[str, Loop]


@pytest.fixture(scope="module")
def scenario(pair: VethPair, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """One run: capture under load while the cron jobs and two analyses loop."""
    tmp_path = tmp_path_factory.mktemp("concurrent")
    d = tmp_path / "archive"
    sent_file = tmp_path / "numbered.pcap"
    write_numbered_pcap(sent_file, PACKETS)
    budget = "3M"  # the archive holds a few seconds of this traffic: retention must work
    cap = LiveCapture(pair, d, "--rotate-bytes", "256K").start()
    try:
        with (
            Loop(bulk("compress", "--dir", str(d), "--older-than", "0", "--max-disk", budget),
                 0.3) as compress,
            Loop(bulk("extract", "--dir", str(d), "-w", str(tmp_path / "x.pcap"), "tcp"),
                 0.2) as extract,
            Loop(bulk("backdoor", "--dir", str(d), "--json"), 0.2) as backdoor,
            Loop(pair.ns_cmd(pair.capture_ns, *bulk("rotate", "-i", pair.capture_dev,
                                                    "--dir", str(d))), 1.0) as rotate,
        ):  # fmt: skip
            sent = tcpreplay_sent(pair.replay(sent_file, pps=RATE, timeout=600))
            cap.wait_packets(sent, timeout=30)
        # One more retention pass with the capture idle, as the next cron run would.
        last = subprocess.run(
            bulk("compress", "--dir", str(d), "--older-than", "0", "--max-disk", budget),
            capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
        )  # fmt: skip
        assert last.returncode == 0, last.stderr
    finally:
        assert cap.stop() == 0, cap.log_text()
    wait_archivers(d)
    loops = {"compress": compress, "extract": extract, "backdoor": backdoor, "rotate": rotate}
    for what, loop in loops.items():
        assert loop.results, f"{what} never ran"
    print(
        f"sent {sent}; "
        + ", ".join(f"{len(loop.results)} {what} runs" for what, loop in loops.items())
    )
    return Scenario(d, sent, cap.log_text(), loops)


def failures(loop: Loop, what: str, ok: tuple[int, ...]) -> list[str]:
    return [
        f"bulk {what} exit {res.returncode}: {res.stderr.strip()[:600]}"
        for res in loop.results
        if "Traceback" in res.stderr or res.returncode not in ok
    ]


def test_capture_compress_retention_rotate_under_load(scenario: Scenario) -> None:
    d, sent, log = scenario.d, scenario.sent, scenario.log
    compress = scenario.loops["compress"]
    bad = failures(compress, "compress", (0,)) + failures(scenario.loops["rotate"], "rotate", (0,))
    assert not bad, "\n".join(bad)
    deleted = sum(r.stdout.count("deleted ") for r in compress.results)
    compressed = sum(r.stdout.count("compressed ") for r in compress.results)
    print(f"{compressed} compressed, {deleted} deleted by retention")
    assert deleted and compressed, "retention and compression must both have worked"
    files = traces(d)
    assert not list(d.glob("*.open")) and not [p for p in d.iterdir() if ".tmp" in p.name]
    counts = {p.name: tcpdump_count(p) for p in files}
    numbers = packet_numbers(files)
    # Retention removed the oldest traces only: one unbroken run to the last packet.
    assert numbers == list(range(numbers[0], sent)), "a gap in what retention kept"
    check_catalogue(d, counts)
    # Nothing lost at all: every packet sent is in a file closed by the capture.
    closed = sum(int(n) for n in re.findall(r"\): (\d+) packets", log))
    drops = sum(int(n) for n in re.findall(r"packets, \d+ bytes, (\d+) drops", log))
    assert (closed, drops) == (sent, 0)


def test_analyses_over_the_changing_archive(scenario: Scenario) -> None:
    """The analyses ran while the archive changed under them: they follow a renamed
    trace and skip a deleted one with a warning (pinned deterministically by
    test_archive_changing_between_listing_and_reading), so they never print a
    traceback and exit 0, or 3 for the open file's cut tail. The loops start with
    the capture: until its first packets reach the open file there is nothing to
    read, which is one 'no trace files' line and exit 2, before any run succeeded
    only."""
    for what in ("extract", "backdoor"):
        loop = scenario.loops[what]
        assert loop.results, f"{what} never ran"
        tracebacks = [r.stderr for r in loop.results if "Traceback" in r.stderr]
        assert not tracebacks, tracebacks[0]
        first_ok = next(i for i, r in enumerate(loop.results) if r.returncode in (0, 3))
        early = loop.results[:first_ok]
        assert all(r.returncode == 2 and "no trace files" in r.stderr for r in early), early
        loop.results = loop.results[first_ok:]
        bad = failures(loop, what, (0, 3))
        assert not bad, "\n".join(bad)
        for res in loop.results:
            for line in res.stderr.splitlines():
                assert line.startswith(f"bulk {what}: "), line


@pytest.mark.parametrize("command", ["extract", "extract-late", "backdoor", "contents"])
def test_archive_changing_between_listing_and_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The race of the live scenario made deterministic: right after a reader lists
    the archive (extract-late: after it planned its reads), rotation finalises the
    open file, compression replaces a trace by its .zst and retention deletes
    another. The reader follows the renamed traces, warns once (one line) about
    the deleted one, exits 0, and its result is that of reading the traces that
    are left."""
    import importlib  # noqa: PLC0415

    from bulk.archive import listing  # noqa: PLC0415
    from bulk.compress.codec import CompressSettings, compress_file  # noqa: PLC0415

    # Imported before anything is patched: a module imported while
    # listing.traces_in_dir is patched would keep the stand-in for good.
    for module in ("backdoor", "contents", "extract", "slice"):
        importlib.import_module(f"bulk.commands.{module}")
    from tests.conftest import DATA  # noqa: PLC0415
    from tests.faults.harness import run_cli  # noqa: PLC0415

    d = tmp_path / "archive"
    d.mkdir()
    names = [f"bulk-20260101T00000{k}Z-eth0-00000{k}.pcap" for k in range(1, 4)]
    for name, src in zip(names, ("zeek-http-get.pcap", "zeek-smtp.pcap", "ssh-on-port-80.pcap"),
                         strict=True):  # fmt: skip
        shutil.copy(DATA / src, d / name)
    os.rename(d / names[2], d / (names[2] + ".open"))
    real = listing.traces_in_dir

    def change() -> None:
        with open(d / (names[0] + ".zst"), "wb") as out:  # compression
            compress_file(str(d / names[0]), out, CompressSettings(threads=1))
        os.unlink(d / names[0])
        os.unlink(d / names[1])  # retention
        os.rename(d / (names[2] + ".open"), d / names[2])  # rotation

    def racing(directory: str, include_open: bool = False, **kw: Any) -> list[str]:
        found = real(directory, include_open=True, **kw)
        change()
        return found

    if command == "extract-late":  # the change comes after the plan is made
        import bulk.extraction as extraction  # noqa: PLC0415

        real_write = extraction.write_plan

        def late(*args: Any, **kw: Any) -> Any:
            change()
            return real_write(*args, **kw)

        monkeypatch.setattr(extraction, "write_plan", late)
    else:
        monkeypatch.setattr(listing, "traces_in_dir", racing)
        for module in ("backdoor", "contents"):
            monkeypatch.setattr(f"bulk.commands.{module}.traces_in_dir", racing)
    argv = {
        "extract": ["extract", "--dir", str(d), "-w", str(tmp_path / "x.pcap"), "tcp"],
        "extract-late": ["extract", "--dir", str(d), "-w", str(tmp_path / "x.pcap"), "tcp"],
        "backdoor": ["backdoor", "--dir", str(d), "--json"],
        "contents": ["contents", "-q", "--dir", str(d), "-o", str(tmp_path / "out")],
    }[command]
    res = run_cli(argv)
    assert "Traceback" not in res.stderr
    assert res.status == 0, res.stderr
    name = command.split("-", maxsplit=1)[0]
    warnings = [line for line in res.stderr_lines if "warning" in line]
    assert warnings == [f"bulk {name}: warning: {d / names[1]}: deleted since listed; skipped"]
    monkeypatch.undo()
    left = [str(d / (names[0] + ".zst")), str(d / names[2])]
    if command == "backdoor":
        # Same findings as reading what is left (tcpdump cannot say what a backdoor is).
        alone = run_cli(["backdoor", "-r", *left, "--json"])
        assert alone.status == 0, alone.stderr
        assert sorted(res.stdout.splitlines()) == sorted(alone.stdout.splitlines())
        assert res.stdout.strip()  # ssh-on-port-80.pcap holds one
    if command == "contents":
        alone = run_cli(["contents", "-q", "-r", *left, "-o", str(tmp_path / "alone")])
        assert alone.status == 0, alone.stderr
        ours = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
        want = {p.name: p.read_bytes() for p in (tmp_path / "alone").iterdir()}
        assert ours == want and len(ours) > 1
    if command.startswith("extract"):
        # What is still there (under its new names) was read, the deleted one skipped.
        want = sum(
            len(subprocess.run(["tcpdump", "-r", str(DATA / src), "-nn", "-q", "tcp"],
                               capture_output=True, text=True, check=True).stdout.splitlines())
            for src in ("zeek-http-get.pcap", "ssh-on-port-80.pcap")
        )  # fmt: skip
        from bulk.trace import open_trace  # noqa: PLC0415

        with open_trace(str(tmp_path / "x.pcap")) as r:
            assert sum(1 for _ in r) == want


class KillingLoop(Loop):
    """``bulk compress`` again and again, each run killed: in turn at each of its
    crash points (BULK_COMPRESS_CRASH_AT: the process dies there, as in a power
    cut; compression's steps and retention's deletion of a trace) and by a real
    SIGKILL after a random delay (wherever it happens to be)."""

    def __init__(self, argv: list[str], rng: random.Random) -> None:
        super().__init__(argv, 0.05)
        self.rng = rng
        self.crashed = dict.fromkeys((*CRASH_POINTS, *RETENTION_CRASH_POINTS), 0)
        self.sigkilled = 0
        self.finished = 0
        self.durations: list[float] = []  # of the runs that finished

    def _run(self) -> None:
        points = [*self.crashed, "sigkill", "sigkill", "sigkill"]
        n = 0
        while not self._stop.is_set():
            point = points[n % len(points)]
            n += 1
            env = dict(os.environ)
            if point != "sigkill":
                env[CRASH_ENV] = point
            t0 = time.monotonic()
            with subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=REPO, env=env) as proc:  # fmt: skip
                if point == "sigkill":
                    try:
                        proc.wait(self._kill_delay())
                    except subprocess.TimeoutExpired:
                        proc.kill()
                out, err = proc.communicate(timeout=300)
            if proc.returncode == 0:
                self.durations.append(time.monotonic() - t0)
            self.results.append(subprocess.CompletedProcess(self.argv, proc.returncode, out, err))
            if proc.returncode == 137 and point != "sigkill":
                self.crashed[point] += 1
            elif proc.returncode == -signal.SIGKILL:
                self.sigkilled += 1
            elif proc.returncode == 0:
                self.finished += 1
            self._stop.wait(self.every)

    def _kill_delay(self) -> float:
        """A moment inside a run: 10-90% of the median time of the runs that
        finished so far (0.1 s before any did). A fixed range stopped landing
        inside runs once start-up and compression got faster."""
        typical = statistics.median(self.durations) if self.durations else 0.1
        return self.rng.uniform(0.1, 0.9) * typical


def test_compress_and_retention_killed_under_load(pair: VethPair, tmp_path: Path) -> None:
    """Compression and retention killed midway, again and again, while capture
    takes 5,000 packets/s. Then the next cron run (unharmed) finishes the job:
    nothing captured is lost or duplicated, retention deleted only the oldest
    traces, every trace reads in tcpdump, no temporary file is left, the
    catalogue matches the files."""
    seed = int(os.environ.get("BULK_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (BULK_FAULT_SEED={seed} repeats the SIGKILL delays)")
    d = tmp_path / "archive"
    sent_file = tmp_path / "numbered.pcap"
    write_numbered_pcap(sent_file, PACKETS)
    budget = "3M"
    compress = bulk("compress", "--dir", str(d), "--older-than", "0", "--max-disk", budget)
    cap = LiveCapture(pair, d, "--rotate-bytes", "256K").start()
    try:
        with KillingLoop(compress, random.Random(seed)) as killing:
            sent = tcpreplay_sent(pair.replay(sent_file, pps=RATE, timeout=600))
            cap.wait_packets(sent, timeout=30)
    finally:
        assert cap.stop() == 0, cap.log_text()
    wait_archivers(d)
    print(f"crashed at {killing.crashed}, {killing.sigkilled} SIGKILLed, "
          f"{killing.finished} finished, of {len(killing.results)} runs")  # fmt: skip
    tracebacks = [r.stderr for r in killing.results if "Traceback" in r.stderr]
    assert not tracebacks, tracebacks[0]
    assert all(killing.crashed.values()), f"crash points never reached: {killing.crashed}"
    assert killing.sigkilled, "no run was SIGKILLed midway"
    # The next cron run, unharmed: finishes what the killed runs left.
    last = subprocess.run(compress, capture_output=True, text=True, timeout=300, check=False,
                          cwd=REPO)  # fmt: skip
    assert last.returncode == 0, last.stderr
    deleted = sum(r.stdout.count("deleted ") for r in [*killing.results, last])
    assert deleted, "retention never deleted anything: the budget was not reached"
    files = traces(d)
    leftovers = [p.name for p in d.iterdir() if ".partial" in p.name or ".tmp" in p.name]
    assert not leftovers and not list(d.glob("*.open")), leftovers
    counts = {p.name: tcpdump_count(p) for p in files}
    numbers = packet_numbers(files)
    assert numbers == list(range(numbers[0], sent)), "a packet lost or duplicated"
    check_catalogue(d, counts)
    log = cap.log_text()
    closed = sum(int(n) for n in re.findall(r"\): (\d+) packets", log))
    drops = sum(int(n) for n in re.findall(r"packets, \d+ bytes, (\d+) drops", log))
    assert (closed, drops) == (sent, 0)
