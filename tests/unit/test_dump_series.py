"""The libpcap engine's series (DumpSeries) against a stand-in dumper that writes
real pcap records the way pcap_dump does (stdio buffer: ftell counts what is
buffered, flush writes it). The files it leaves are checked with the trace
layer's reader and tcpdump, not with the series' own arithmetic."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
from pathlib import Path

import pytest

from bulk.archive.scan import scan_trace
from bulk.capture.series import REORDER_NS, DumpSeries
from bulk.trace import open_trace
from tests.conftest import require_tool

T0_US = 1_700_000_000 * 1_000_000


class StandInDumper:
    def __init__(self, path: str) -> None:
        self.f = open(path, "wb", buffering=0)  # noqa: SIM115
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.buf = bytearray()
        self.fail_flush = False

    def ftell(self) -> int:
        return self.f.tell() + len(self.buf)

    def write(self, ts_us: int, data: bytes) -> None:
        self.buf += struct.pack("<IIII", ts_us // 10**6, ts_us % 10**6, len(data), len(data))
        self.buf += data
        if len(self.buf) >= 4096:  # stdio writes whole buffers now and then
            if self.fail_flush:
                self.buf.clear()  # pcap_dump never reports a failed write: lost
            else:
                self.flush()

    def flush(self) -> None:
        if self.fail_flush:
            raise OSError(28, "No space left on device")
        self.f.write(bytes(self.buf))
        self.buf.clear()

    def dump(self, hdr: object, data: object) -> None:
        raise AssertionError("no packet goes through Python here")

    def close(self) -> None:
        if not self.fail_flush:
            self.flush()
        self.f.close()


class StandInHandle:
    """Hands out ``batches`` (lists of (time us, length)) one per dispatch."""

    engine = "libpcap"

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []
        self.dumper: StandInDumper | None = None

    def dump_open(self, path: str) -> StandInDumper:
        self.dumper = StandInDumper(path)
        return self.dumper

    def dump_all(self, cnt: int, dumper: StandInDumper) -> int:
        if not self.batches:
            return 0
        batch = self.batches.pop(0)
        assert len(batch) <= cnt
        for ts, n in batch:
            dumper.write(ts, bytes([len(batch) & 0xFF]) * n)
        return len(batch)


def _times(path: str) -> list[int]:
    with open_trace(path) as r:
        return [p.ts_ns for p in r]


def _batches(count: int, sizes: tuple[int, ...]) -> list[list[tuple[int, int]]]:
    out: list[list[tuple[int, int]]] = []
    t = T0_US
    for i in range(count):
        batch = []
        for j in range(sizes[i % len(sizes)]):
            batch.append((t, 60 + (i * 7 + j * 13) % 1400))
            t += 37
        out.append(batch)
    return out


def test_index_entries_sit_on_records_and_bound_their_segments(tmp_path: Path) -> None:
    require_tool("tcpdump")
    handle = StandInHandle()
    series = DumpSeries(handle, str(tmp_path), "eth0", 0, 1, every=20_000)
    opened = series.open_next()
    handle.batches = _batches(60, (1, 17, 40, 3))
    while series.pump():
        pass
    closed = series.close_current(0, 0, reopen=False)
    assert closed is not None and closed.entries is not None
    path = opened.path
    times = _times(path)
    scan = scan_trace(path)
    assert (closed.packets, closed.bytes, closed.size) == (
        scan.packets,
        scan.bytes,
        os.path.getsize(path),
    )
    assert (closed.first_ns, closed.last_ns) == (times[0], max(times))
    entries = closed.entries
    assert len(entries) >= 5
    for i, (packet, offset, ts, low, high) in enumerate(entries):
        head = tmp_path / "head.pcap"
        if packet:
            subprocess.run(
                ["tcpdump", "-r", path, "-c", str(packet), "-w", str(head)],
                capture_output=True,
                check=True,
            )
        assert offset == (head.stat().st_size if packet else 24)
        assert ts == times[packet]
        stop = entries[i + 1][0] if i + 1 < len(entries) else len(times)
        assert low <= min(times[packet:stop]) and max(times[packet:stop]) <= high
        assert low >= ts - REORDER_NS
        if i:
            assert offset - entries[i - 1][1] >= 20_000


def test_a_failed_flush_leaves_the_file_to_the_scan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handle = StandInHandle()
    series = DumpSeries(handle, str(tmp_path), "eth0", 0, 1, every=20_000)
    series.open_next()
    handle.batches = _batches(30, (17,))
    assert series.pump()
    assert handle.dumper is not None
    handle.dumper.fail_flush = True
    with caplog.at_level(logging.ERROR, logger="bulk.capture"):
        while series.pump():  # the capture goes on
            pass
        closed = series.close_current(0, 0, reopen=False)
    assert closed is not None and closed.packets == 30 * 17
    assert closed.entries is None and closed.last_ns is None  # the archiver scans it
    assert "index not kept while writing" in caplog.text


def test_an_empty_file_has_no_entries(tmp_path: Path) -> None:
    handle = StandInHandle()
    series = DumpSeries(handle, str(tmp_path), "eth0", 0, 1)
    series.open_next()
    assert series.pump() == 0
    closed = series.close_current(0, 0, reopen=True)
    assert closed is not None
    assert (closed.packets, closed.size, closed.entries, closed.first_ns) == (0, 24, [], None)
    assert series.current is not None and series.current.name.seq == 2
