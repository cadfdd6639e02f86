"""A clock step backwards during capture: names and ordering stay correct.

CLOCK_REALTIME cannot be given its own namespace (time namespaces cover only
the monotonic and boot clocks) and stepping this shared machine's clock is not
an option, so the capture's file naming takes an injectable clock and these
tests drive it; what the kernel then stamps on packets (times going back) is
reproduced in the traces and the catalogue. See docs/testing.md.

What must hold:
- within a series, name order is capture order (sequence order), so ``ls``,
  globs and tools that take files in name order see them in capture order;
- no name is ever reused and no file overwritten, whatever the clock does;
- readers (slice) select by packet time, exactly as a naive filter would;
- retention deletes the oldest captured files first, not the newest ones
  whose packets carry the stepped-back times.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bulk.archive.catalogue import Catalogue
from bulk.archive.naming import parse_name
from bulk.capture.series import Series
from bulk.compress.budget import Budget
from bulk.compress.retention import DiskUsage, RetentionPolicy, closed_traces, plan
from bulk.compress.safe import Archive
from bulk.trace import PcapWriter, open_trace
from tests.conftest import DATA
from tests.faults.harness import run_cli

HOUR = 3600 * 1_000_000_000
T0 = 1_790_000_000 * 1_000_000_000


class FakeDumper:
    def __init__(self, path: str) -> None:
        self.path = path

    def dump(self, hdr: Any, data: bytes) -> None:
        raise AssertionError("not used")

    def close(self) -> None:
        pass


class FakeHandle:
    def dump_open(self, path: str) -> FakeDumper:
        with open(path, "wb") as f:  # what libpcap's dumper writes first
            f.write(b"\xd4\xc3\xb2\xa1" + bytes(20))
        return FakeDumper(path)


class Clock:
    def __init__(self, times: list[int]) -> None:
        self.times = list(times)
        self.now = times[0]

    def __call__(self) -> int:
        if self.times:
            self.now = self.times.pop(0)
        return self.now


STEPS = [T0, T0 + 60 * 10**9, T0 - HOUR, T0 - HOUR + 60 * 10**9, T0 - 2 * HOUR, T0 + 5 * 10**9]


def _open_files(series: Series, n: int) -> list[str]:
    names = []
    for _ in range(n):
        opened = series.open_next()
        names.append(os.path.basename(opened.path))
        os.rename(opened.path, opened.path.removesuffix(".open"))  # "closed"
    return names


def test_names_follow_capture_order_across_a_backward_step(tmp_path: Path) -> None:
    clock = Clock(STEPS)
    series = Series(FakeHandle(), str(tmp_path), "eth0", 0, 1, clock=clock)
    names = _open_files(series, len(STEPS))
    parsed = [parse_name(n) for n in names]
    assert [p.seq for p in parsed] == list(range(1, len(STEPS) + 1))  # type: ignore[union-attr]
    finals = [n.removesuffix(".open") for n in names]
    assert sorted(finals) == finals, "name order is not capture order after the step"
    times = [p.time_s for p in parsed]  # type: ignore[union-attr]
    assert times == sorted(times)
    # The names do not lie more than the step: the first file after it keeps
    # the previous file's time, never a time in the future of the clock's past.
    assert max(times) == (T0 + 60 * 10**9) // 10**9


def test_a_restart_after_a_backward_step_continues_the_order(tmp_path: Path) -> None:
    first = Series(FakeHandle(), str(tmp_path), "eth0", 0, 1, clock=Clock([T0, T0 + 10**9]))
    before = _open_files(first, 2)
    # The capture restarts after the clock went back an hour.
    again = Series(FakeHandle(), str(tmp_path), "eth0", 0, 3, clock=Clock([T0 - HOUR]))
    after = _open_files(again, 1)
    finals = [n.removesuffix(".open") for n in before + after]
    assert sorted(os.listdir(tmp_path)) == finals
    assert [parse_name(n).seq for n in finals] == [1, 2, 3]  # type: ignore[union-attr]


def test_a_name_is_never_reused_whatever_the_clock(tmp_path: Path) -> None:
    """Same second, same sequence number (a stale catalogue): never overwritten."""
    (tmp_path / "bulk-20260918T012000Z-eth0-000001.pcap").write_bytes(b"keep")
    clock = Clock([1_789_694_400 * 10**9] * 3)  # 2026-09-18T01:20:00Z
    series = Series(FakeHandle(), str(tmp_path), "eth0", 0, 1, clock=clock)
    names = _open_files(series, 2)
    assert [parse_name(n).seq for n in names] == [2, 3]  # type: ignore[union-attr]
    assert (tmp_path / "bulk-20260918T012000Z-eth0-000001.pcap").read_bytes() == b"keep"


def _stepped_archive(d: Path) -> list[tuple[str, list[int]]]:
    """Three files of one series whose packet times step back an hour in file 2."""
    with open_trace(str(DATA / "zeek-smtp.pcap")) as r:
        pkts = list(r)
    base = pkts[0].ts_ns
    plan_ = [
        ("bulk-20260101T000000Z-eth0-000001.pcap", 0, 0),
        ("bulk-20260101T000100Z-eth0-000002.pcap", 40, -HOUR),  # the step, mid-file
        ("bulk-20260101T000100Z-eth0-000003.pcap", 80, -HOUR),
    ]
    out = []
    for k, (name, start, shift) in enumerate(plan_):
        times = []
        with PcapWriter(str(d / name), 1) as w:
            for i, p in enumerate(pkts[start : start + 40]):
                ts = T0 + (start + i) * 10**6 + (shift if (k > 1 or i >= 20) else 0)
                times.append(ts)
                w.write_record(ts, p.wirelen, p.data)
        out.append((name, times))
    _ = base
    return out


def test_slice_of_a_stepped_archive_equals_a_naive_filter(tmp_path: Path) -> None:
    d = tmp_path / "archive"
    d.mkdir()
    files = _stepped_archive(d)
    assert run_cli(["index", "-q", "--rebuild", "--dir", str(d)]).status == 0
    all_times = sorted(t for _n, ts in files for t in ts)
    for lo, hi in ((T0 - HOUR + 70 * 10**6, T0 - HOUR + 90 * 10**6), (T0 + 10**7, T0 + 5 * 10**7)):
        out = tmp_path / f"slice-{lo}.pcap"
        res = run_cli(["slice", f"{lo / 1e9:.6f}", f"{hi / 1e9:.6f}", "--dir", str(d),
                       "-w", str(out)])  # fmt: skip
        assert res.status == 0, res.stderr
        with open_trace(str(out)) as r:
            got = [p.ts_ns for p in r]
        want = [t for t in all_times if lo <= t <= hi]
        assert got == want and want


def test_retention_deletes_the_oldest_captured_first(tmp_path: Path) -> None:
    """After the step, the newest files hold the earliest packet times: deleting
    by packet time would delete what was captured last."""
    d = tmp_path / "archive"
    d.mkdir()
    files = _stepped_archive(d)
    with Catalogue.open(str(d)) as cat:
        cat.rebuild()
        for name, _t in files:
            cat.update_file(name, interface="eth0")
        candidates, _busy = closed_traces(str(d), Archive(str(d), cat))
    total = sum(t.bytes for t in candidates)
    one = max(t.bytes for t in candidates)
    deletions, _w = plan(
        candidates,
        RetentionPolicy(budget=Budget(size=total - one)),
        T0,
        DiskUsage(1, 0),
        total,
    )
    assert [os.path.basename(x.path) for x in deletions] == [files[0][0]]


@pytest.fixture(autouse=True)
def _cleanup(tmp_path: Path) -> Any:
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
