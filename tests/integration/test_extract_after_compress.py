"""An index written before compression must not make extraction misread the .zst."""

from __future__ import annotations

import shutil
from pathlib import Path

from bulk.archive.hostindex import write_index_for
from tests.conftest import DATA, run_bulk


def test_extract_reads_a_trace_compressed_after_indexing(tmp_path: Path) -> None:
    d = tmp_path / "archive"
    d.mkdir()
    trace = d / "bulk-20260101T000000Z-eth0-000001.pcap"
    shutil.copy(DATA / "zeek-ftp-retr.pcap", trace)
    write_index_for(str(trace))  # what capture does on close
    before = run_bulk("extract", "-r", trace, "-w", tmp_path / "a.pcap", "tcp", check=True)
    assert before.returncode == 0
    run_bulk("compress", "--dir", d, "--older-than", "0", check=True)
    [zst] = d.glob("*.pcap.zst")
    assert (d / (zst.name + ".idx")).exists()
    run_bulk("extract", "-r", zst, "-w", tmp_path / "b.pcap", "tcp", check=True)
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "b.pcap").read_bytes()
