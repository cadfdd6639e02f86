"""`bulk compress` keeps the archive catalogue right: renamed rows, state, frame
index, deleted rows; also after a crash between the rename and the catalogue."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bulk.archive.catalogue import Catalogue, FileRecord
from bulk.compress.safe import CATALOGUE_GRACE_S, CRASH_ENV
from bulk.trace.seekable import SeekableTrace
from tests.compress_data import make_pcap
from tests.conftest import BULK, DATA, run_bulk

pytestmark = pytest.mark.integration


def archive_with_catalogue(d: Path) -> list[str]:
    d.mkdir()
    names = []
    for i in range(3):
        name = f"bulk-2026010{i + 1}T000000Z-eth0-{i + 1:06d}.pcap"
        make_pcap(d / name, 300_000, seed=i, start_s=1_767_225_600 + 86_400 * i)
        names.append(name)
    shutil.copy2(DATA / "zeek-smtp.pcap", d / "zeek-smtp.pcap")
    names.append("zeek-smtp.pcap")
    (d / (names[0] + ".idx")).write_bytes(b"side file of the first trace")
    with Catalogue.open(str(d)) as cat:
        for n in names:
            cat.index_file(str(d / n))
    return names


def check_catalogue(d: Path, names: list[str]) -> None:
    with Catalogue.open(str(d), create=False) as cat:
        rows = {r.name: r for r in cat.files()}
        assert set(rows) == {n + ".zst" for n in names}
        for n in names:
            rec = rows[n + ".zst"]
            assert rec.state == "compressed" and rec.compression == "zstd"
            assert rec.size == (d / (n + ".zst")).stat().st_size
            with SeekableTrace.open(str(d / (n + ".zst"))) as st:
                assert rec.packets == st.packets
                assert rec.raw_size == st.size
                frames = cat.frame_index(n + ".zst")
                assert [
                    (f.raw_offset, f.raw_size, f.comp_offset, f.comp_size, f.packets)
                    for f in frames
                ] == [
                    (f.decomp_offset, f.decomp_size, f.comp_offset, f.comp_size, f.packets)
                    for f in st.frames
                ]


def test_catalogue_follows_compression_and_retention(tmp_path: Path) -> None:
    d = tmp_path / "archive"
    names = archive_with_catalogue(d)
    proc = run_bulk("compress", "--dir", d, "--frame-size", "64K")
    assert proc.returncode == 0, proc.stderr.decode()
    check_catalogue(d, names)
    # The side file followed its trace.
    assert (d / (names[0] + ".zst.idx")).read_bytes() == b"side file of the first trace"
    assert not (d / (names[0] + ".idx")).exists()
    # Retention by age uses the catalogue's newest packet (2026-01-0x), not the file time.
    now_days = (time.time() - 1_767_225_600) / 86_400
    keep = now_days - 1.5  # the first two of the three archive traces are older than this
    proc = run_bulk("compress", "--dir", d, "--keep-days", f"{keep:.3f}", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    with Catalogue.open(str(d), create=False) as cat:
        left = {r.name for r in cat.files()}
    gone = {n + ".zst" for n in names} - left
    assert {names[0] + ".zst", names[1] + ".zst"} <= gone
    assert names[2] + ".zst" in left
    for g in gone:
        assert not (d / g).exists()
    assert not (d / (names[0] + ".zst.idx")).exists()


@pytest.mark.parametrize("point", ["after-rename", "after-catalogue"])
def test_catalogue_right_after_a_crash(tmp_path: Path, point: str) -> None:
    d = tmp_path / "archive"
    names = archive_with_catalogue(d)
    proc = subprocess.run(
        [*BULK, "compress", "--dir", str(d), "--frame-size", "64K"],
        env={**os.environ, CRASH_ENV: point},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 137
    proc = run_bulk("compress", "--dir", d, "--frame-size", "64K")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"finished an interrupted compression" in proc.stdout
    check_catalogue(d, names)


def test_a_file_the_capture_is_still_cataloguing_waits(tmp_path: Path) -> None:
    """The capture finalises X.pcap.open as X.pcap before it scans the file and
    renames its catalogue row: until the row is renamed, compress leaves X.pcap."""
    d = tmp_path / "archive"
    d.mkdir()
    name = "bulk-20260101T000000Z-eth0-000001.pcap"
    make_pcap(d / name, 200_000, seed=1)
    with Catalogue.open(str(d)) as cat:
        cat.add_file(FileRecord(name=name + ".open", state="open"))
    proc = run_bulk("compress", "--dir", d)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"still cataloguing" in proc.stdout
    assert (d / name).exists() and not (d / (name + ".zst")).exists()
    # The capture's archiver finishes: the row becomes X.pcap, closed.
    with Catalogue.open(str(d)) as cat:
        cat.update_file(name + ".open", name=name, state="closed")
    proc = run_bulk("compress", "--dir", d)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (d / (name + ".zst")).exists() and not (d / name).exists()
    with Catalogue.open(str(d), create=False) as cat:
        assert [(r.name, r.state) for r in cat.files()] == [(name + ".zst", "compressed")]


def test_a_lost_catalogue_update_does_not_block_forever(tmp_path: Path) -> None:
    """The capture's catalogue update never came (its catalogue failed): after the
    grace period the trace is compressed and the stale open row taken over."""
    d = tmp_path / "archive"
    d.mkdir()
    name = "bulk-20260101T000000Z-eth0-000001.pcap"
    make_pcap(d / name, 200_000, seed=1)
    old = time.time() - CATALOGUE_GRACE_S - 60
    os.utime(d / name, (old, old))
    with Catalogue.open(str(d)) as cat:
        cat.add_file(FileRecord(name=name + ".open", state="open"))
    proc = run_bulk("compress", "--dir", d)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (d / (name + ".zst")).exists() and not (d / name).exists()
    with Catalogue.open(str(d), create=False) as cat:
        assert [(r.name, r.state) for r in cat.files()] == [(name + ".zst", "compressed")]
