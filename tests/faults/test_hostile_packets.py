"""Hostile packets: output names never escape OUTDIR; lying lengths, overlapping
segments, absurd sequence jumps and floods of connections keep memory bounded.

Memory is measured in a process of its own (tests/faults/rss_probe.py: the
flow table with the contents and backdoor analyzers, at most 1,000 flows and
8 MiB of out-of-order data): its peak RSS must stay flat when the hostile
input grows threefold, and close to what a small benign trace costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bulk.analyzers.contents import ContentsAnalyzer
from bulk.decode import PROTO_TCP
from bulk.errors import BulkError
from bulk.flow.table import FlowConfig, FlowTable
from bulk.trace.packet import Packet
from tests.conftest import DATA
from tests.faults import hostile
from tests.faults.harness import LONG, assert_clean_cli, run_cli
from tests.pktbuild import ACK, FIN, PSH, Conn

REPO = Path(__file__).parents[2]
SCALE = 3 if LONG else 1
MiB = 1024


def probe(trace: Path, outdir: Path) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.faults.rss_probe", str(trace), str(outdir)],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    result: dict[str, int] = json.loads(proc.stdout)
    return result


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS (KiB) for a small benign trace: Python, bulk and the analyzers."""
    return probe(DATA / "zeek-smtp.pcap", tmp_path_factory.mktemp("base") / "o")["rss_kib"]


@pytest.mark.parametrize(
    ("kind", "small"),
    [("seq_jumps", 6000), ("overlaps", 6000), ("many_flows", 2500), ("bad_lengths", 6000)],
)
def test_memory_stays_bounded(tmp_path: Path, baseline: int, kind: str, small: int) -> None:
    gen = getattr(hostile, kind)
    peaks = []
    for n in (small * SCALE, 3 * small * SCALE):
        trace = tmp_path / f"{kind}-{n}.pcap"
        hostile.write(trace, gen(n))
        out = tmp_path / f"out-{n}"
        r = probe(trace, out)
        offered = trace.stat().st_size
        # Gaps are written as markers, never as filler: output stays below the input.
        assert r["bytes"] <= offered, r
        for entry in os.scandir(out):
            assert entry.is_file(follow_symlinks=False) and entry.name.startswith("contents.")
        peaks.append(r["rss_kib"])
        trace.unlink()
    print(f"{kind}: peak RSS {peaks[0] // MiB} MiB -> {peaks[1] // MiB} MiB for 3x the input "
          f"(benign trace {baseline // MiB} MiB)")  # fmt: skip
    # Flat: an unbounded structure would grow by megabytes per thousand flows or
    # segments (each flow ~3 KiB, each segment 1.4 KB). Ended flows are cyclic
    # garbage that Python's collector frees in batches: a few MiB of slack.
    assert peaks[1] - peaks[0] < 12 * MiB, "memory grows with the hostile input"
    assert peaks[1] - baseline < 48 * MiB


# -- output names ---------------------------------------------------------------


class Talk:
    """A connection that keeps its own stream offsets."""

    def __init__(self, cp: int) -> None:
        self.c = Conn(cp=cp)
        self.off = [0, 0]

    def open(self) -> list[Packet]:
        return self.c.handshake()

    def send(self, d: int, data: bytes, flags: int = ACK | PSH) -> Packet:
        f = self.c.c2s if d == 0 else self.c.s2c
        pkt = f(self.off[d], data, flags)
        self.off[d] += len(data) + (1 if flags & FIN else 0)
        return pkt

    def close(self) -> list[Packet]:
        return [self.send(0, b"", ACK | FIN), self.send(1, b"", ACK | FIN)]


def _conn_trace(path: Path, n: int = 3) -> None:
    """``n`` small connections, written as a pcap."""
    pkts: list[Packet] = []
    for k in range(n):
        t = Talk(40000 + k)
        pkts += t.open()
        pkts += [t.send(0, b"GET / HTTP/1.0\r\n\r\n" * 4),
                 t.send(1, b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 3000)]  # fmt: skip
        pkts += t.close()
    hostile.write(path, iter(pkts))


def test_planted_symlinks_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    trace = tmp_path / "t.pcap"
    _conn_trace(trace)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "contents.jsonl").symlink_to(victim)
    (out / "contents.10.0.0.1.40000.10.0.0.2.80").symlink_to(victim)
    res = run_cli(["contents", "-r", str(trace), "-o", str(out)])
    assert_clean_cli(res, "contents")
    assert res.status == 2 and "already holds contents output" in res.stderr
    assert victim.read_text() == "precious"
    assert (out / "contents.jsonl").is_symlink()


def test_symlinks_swapped_in_while_writing_are_never_followed(tmp_path: Path) -> None:
    """A local user replaces output files by symlinks while bulk contents runs (the
    analyzer closes and reopens files: at most 2 open here). Nothing outside
    OUTDIR is ever written: the reopen fails cleanly instead."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "out"
    analyzer = ContentsAnalyzer(str(out), max_open_files=2, chunk_bytes=1)
    table = FlowTable([analyzer], FlowConfig(protocols=frozenset((PROTO_TCP,))))
    conns = [Talk(41000 + k) for k in range(4)]
    for t in conns:
        for p in [*t.open(), t.send(0, b"first "), t.send(1, b"reply ")]:
            table.process(p)
    swapped = 0
    for entry in list(os.scandir(out)):
        if entry.name.startswith("contents.") and entry.name != "contents.jsonl":
            os.rename(entry.path, entry.path + ".moved")
            os.symlink(victim, entry.path)
            swapped += 1
    assert swapped
    try:
        for t in conns:
            for p in [t.send(0, b"second " * 100), t.send(1, b"more " * 100), *t.close()]:
                table.process(p)
        table.finish()
    except BulkError as exc:
        assert "cannot reopen" in str(exc) or "cannot create" in str(exc), exc
    finally:
        analyzer.close()
    assert victim.read_text() == "precious"
    for entry in os.scandir(out):
        if entry.is_symlink():
            assert os.readlink(entry.path) == str(victim)  # left as planted


@pytest.mark.parametrize(
    "outname", ["with space", "new\nline", "-leading-dash", "ü-ñ-é", "x" * 200, "..dots.."]
)
def test_odd_output_directory_names(tmp_path: Path, outname: str) -> None:
    trace = tmp_path / "t.pcap"
    _conn_trace(trace, 1)
    out = tmp_path / outname
    res = run_cli(["contents", "-q", "-r", str(trace), f"-o{out}"])
    assert_clean_cli(res, "contents", allowed=(0,))
    names = sorted(os.listdir(out))
    assert "contents.jsonl" in names and len(names) == 3
    assert all((out / n).is_file() and not (out / n).is_symlink() for n in names)


def test_outdir_that_is_a_file_or_unwritable(tmp_path: Path) -> None:
    trace = tmp_path / "t.pcap"
    _conn_trace(trace, 1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli(["contents", "-q", "-r", str(trace), "-o", str(blocker)])
    assert_clean_cli(res, "contents")
    assert res.status != 0 and blocker.read_text() == "x"
    if os.geteuid() == 0:  # root writes anywhere: a read-only mount it is
        ro = tmp_path / "ro"
        ro.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
        try:
            for target in (ro, ro / "sub"):
                res = run_cli(["contents", "-q", "-r", str(trace), "-o", str(target)])
                assert_clean_cli(res, "contents")
                assert res.status == 2 and "Read-only file system" in res.stderr, res.stderr
        finally:
            subprocess.run(["umount", "-l", str(ro)], check=False)
