"""The archive catalogue: rows, windows, time index, schema version, concurrency, rebuild."""

from __future__ import annotations

import shutil
import sqlite3
import struct
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulk.archive.catalogue import Catalogue, FileRecord, FrameEntry, catalogue_path
from bulk.archive.naming import TraceName
from bulk.archive.scan import scan_trace
from bulk.errors import ArchiveError
from bulk.trace import PcapWriter
from tests.conftest import DATA

SEC = 1_000_000_000


def write_pcap(path: Path, times_us: list[int], size: int = 60) -> None:
    with PcapWriter(str(path), 1) as w:
        for i, t in enumerate(times_us):
            w.write_record(t * 1000, size, bytes([i % 256]) * size)


def test_add_get_update_rename_remove(tmp_path: Path) -> None:
    with Catalogue.open(str(tmp_path)) as cat:
        rec = cat.add_file(FileRecord(name="a.pcap.open", state="open", interface="eth0", seq=7))
        assert rec.id is not None and cat.get("a.pcap.open") == rec
        with pytest.raises(ArchiveError, match="already in the catalogue"):
            cat.add_file(FileRecord(name="a.pcap.open", state="open"))
        done = cat.update_file("a.pcap.open", name="a.pcap", state="closed", packets=3, drops=0)
        assert (done.name, done.state, done.packets, done.drops, done.seq) == (
            "a.pcap",
            "closed",
            3,
            0,
            7,
        )
        assert cat.get("a.pcap.open") is None
        with pytest.raises(ArchiveError, match="unknown catalogue field"):
            cat.update_file("a.pcap", colour="red")
        with pytest.raises(ArchiveError, match="bad state"):
            cat.update_file("a.pcap", state="lost")
        with pytest.raises(ArchiveError, match="not in the catalogue"):
            cat.update_file("b.pcap", packets=1)
        cat.set_frame_index("a.pcap", [FrameEntry(0, 24, 100, 0, 50, 1, 2, 3)])
        assert cat.frame_index("a.pcap") == [FrameEntry(0, 24, 100, 0, 50, 1, 2, 3)]
        assert cat.last_seq("eth0", 0) == 7
        assert cat.remove_file("a.pcap")
        assert cat.frame_index("a.pcap") == [] and cat.files() == []
        assert cat.last_seq("eth0", 0) == 7  # the series remembers its numbers


def test_window_query(tmp_path: Path) -> None:
    with Catalogue.open(str(tmp_path)) as cat:
        cat.add_file(
            FileRecord(
                "old.pcap", "closed", packets=5, first_ns=10 * SEC, last_ns=20 * SEC, indexed=True
            )
        )
        # Closed but not yet indexed: no last time; no packet is later than its close.
        cat.add_file(
            FileRecord("recent.pcap", "closed", packets=5, first_ns=30 * SEC, closed_ns=40 * SEC)
        )
        cat.add_file(
            FileRecord("empty.pcap", "closed", packets=0, opened_ns=25 * SEC, closed_ns=26 * SEC)
        )
        cat.add_file(FileRecord("now.pcap.open", "open", opened_ns=50 * SEC, first_ns=50 * SEC))

        def names(start: int | None, end: int | None, **kw: object) -> list[str]:
            return [r.name for r in cat.files(start, end, **kw)]  # type: ignore[arg-type]

        assert names(None, None) == ["old.pcap", "empty.pcap", "recent.pcap", "now.pcap.open"]
        assert names(15 * SEC, 16 * SEC) == ["old.pcap"]
        assert names(20 * SEC, 30 * SEC) == ["old.pcap"]  # end is exclusive
        assert names(21 * SEC, 35 * SEC) == ["recent.pcap"]
        assert names(41 * SEC, 45 * SEC) == []
        assert names(100 * SEC, None) == ["now.pcap.open"]
        assert names(None, None, states=["closed"]) == ["old.pcap", "empty.pcap", "recent.pcap"]
        assert names(None, None, interface="eth9") == []


times_lists = st.lists(st.integers(0, 5_000_000), min_size=1, max_size=300)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    times_us=times_lists, probe=st.integers(-10, 5_000_010), every=st.sampled_from([1, 200, 1000])
)
def test_start_offset_skips_only_older_records(
    tmp_path: Path, times_us: list[int], probe: int, every: int
) -> None:
    """Out-of-order times included: every record before the start offset is older."""
    path = tmp_path / "t.pcap"
    write_pcap(path, times_us)
    data = path.read_bytes()
    scan = scan_trace(str(path), every=every)
    with Catalogue.open(str(tmp_path)) as cat:
        cat.record_scan("t.pcap", scan, state="closed")
        offset, packet = cat.start_offset("t.pcap", probe * 1000)
        entries = cat.time_index("t.pcap")
    assert entries == scan.entries and entries[0].offset == 24
    assert all(t < probe for t in times_us[:packet])
    assert offset == 24 + packet * (16 + 60)
    for e in entries:  # each entry points at a record header with its time
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, e.offset)
        assert (sec * SEC + usec * 1000, caplen) == (e.ts_ns, 60)
        n = e.packet
        assert e.offset == 24 + n * 76
    for a, b in zip(entries, [*entries[1:], None], strict=True):
        seg = times_us[a.packet : b.packet if b else None]
        assert (a.min_ns, a.max_ns) == (min(seg) * 1000, max(seg) * 1000)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Catalogue.open(str(tmp_path)).close()
    conn = sqlite3.connect(catalogue_path(str(tmp_path)))
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ArchiveError, match="schema 99 is newer"):
        Catalogue.open(str(tmp_path))


def test_a_writer_waits_for_another_instead_of_failing(tmp_path: Path) -> None:
    with Catalogue.open(str(tmp_path)) as cat:
        cat.add_file(FileRecord("x.pcap", "closed"))
    holder = sqlite3.connect(
        catalogue_path(str(tmp_path)), isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE files SET packets = 1")
    released = threading.Event()

    def release() -> None:
        time.sleep(0.3)
        holder.execute("COMMIT")
        released.set()

    t = threading.Thread(target=release)
    t.start()
    with Catalogue.open(str(tmp_path)) as other:
        rec = other.update_file("x.pcap", packets=2)  # blocks until the commit, then succeeds
    t.join()
    assert released.is_set() and rec.packets == 2
    holder.close()


def test_rebuild_matches_the_files_and_keeps_what_only_capture_knew(tmp_path: Path) -> None:
    names = [TraceName(1_700_000_000 + i, "eth0", i + 1).name for i in range(3)]
    for name, src in zip(names, ["zeek-smtp.pcap", "ssh-dups.pcap", "dns_udp.pcap"], strict=True):
        shutil.copy(DATA / src, tmp_path / name)
    shutil.copy(DATA / "irc-dcc-send.pcapng", tmp_path / "imported.pcapng")
    with Catalogue.open(str(tmp_path)) as cat:
        report = cat.rebuild()
        assert report.files == 4 and not report.errors
        first = {r.name: r for r in cat.files()}
        assert first[names[1]].packets == 377 and first["imported.pcapng"].packets == 1184
        assert first[names[0]].interface == "eth0" and first[names[2]].seq == 3
        cat.update_file(names[0], drops=5)
        cat.add_file(FileRecord("gone.pcap", "closed"))
        (tmp_path / names[2]).unlink()
        report = cat.rebuild()
        assert report.removed == 2 and report.files == 3
        again = {r.name: r for r in cat.files()}
        assert set(again) == {names[0], names[1], "imported.pcapng"}
        assert again[names[0]].drops == 5  # same size: kept
        assert again[names[1]].packets == first[names[1]].packets
        assert cat.last_seq("eth0", 0) == 3  # the deleted file's number stays used


def test_rebuild_reports_a_file_that_is_not_a_trace(tmp_path: Path) -> None:
    (tmp_path / "junk.pcap").write_bytes(b"not a trace at all")
    with Catalogue.open(str(tmp_path)) as cat:
        report = cat.rebuild()
    assert report.files == 0 and len(report.errors) == 1 and "junk.pcap" in report.errors[0]
