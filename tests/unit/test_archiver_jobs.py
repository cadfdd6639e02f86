"""The capture's archiver jobs against the catalogue, in the orders two processes can run them.

A capture killed with kill -9 leaves its archiver process behind, finishing the
jobs already in its pipe, while the next capture's archiver repairs the files
left open. Both write the same catalogue rows: whatever the interleaving, every
row must name a file on disk.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bulk.archive.catalogue import Catalogue
from bulk.archive.scan import scan_trace
from bulk.capture.archiver import _Jobs
from tests.conftest import DATA

SMTP = DATA / "zeek-smtp.pcap"
NAME = "bulk-20260101T000000Z-eth0-000007.pcap"


def _opened(path: Path) -> dict[str, Any]:
    return {
        "kind": "opened", "path": str(path), "interface": "eth0", "worker": 0, "seq": 7,
        "opened_ns": 1_767_225_600_000_000_000, "linktype": 1, "snaplen": 262144,
    }  # fmt: skip


def _repair(path: Path) -> dict[str, Any]:
    return {"kind": "repair", "path": str(path), "linktype": 1, "snaplen": 262144}


def _rows(d: Path) -> dict[str, str]:
    with Catalogue.open(str(d)) as cat:
        return {r.name: r.state for r in cat.files()}


@pytest.fixture
def left_open(tmp_path: Path) -> Path:
    """An archive holding one file a killed capture left open."""
    d = tmp_path / "archive"
    d.mkdir()
    shutil.copyfile(SMTP, d / (NAME + ".open"))
    return d


def test_a_late_opened_job_leaves_no_row_for_a_file_already_repaired(
    left_open: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The killed capture's archiver, behind on its jobs, catalogues the file as
    open after the next capture's archiver repaired and finalised it: the open
    row must not stay behind (it named a file that no longer existed)."""
    d, open_path = left_open, left_open / (NAME + ".open")
    killed, nxt = _Jobs(str(d), index=False), _Jobs(str(d), index=False)
    nxt._do(_repair(open_path))
    assert not open_path.exists() and (d / NAME).exists()
    with caplog.at_level(logging.INFO, logger="bulk.capture"):
        killed._do(_opened(open_path))
    assert _rows(d) == {NAME: "closed"}
    with Catalogue.open(str(d)) as cat:
        rec = cat.get(NAME)
    assert rec is not None and rec.packets == scan_trace(str(d / NAME)).packets
    assert any("finalised meanwhile" in r.getMessage() for r in caplog.records)


def test_an_opened_job_before_the_repair_is_renamed_by_it(left_open: Path) -> None:
    """The usual order: the open row exists when the repair runs, which turns it
    into the closed row of the final file (keeping what only the capture knew)."""
    d, open_path = left_open, left_open / (NAME + ".open")
    killed, nxt = _Jobs(str(d), index=False), _Jobs(str(d), index=False)
    killed._do(_opened(open_path))
    assert _rows(d) == {NAME + ".open": "open"}
    nxt._do(_repair(open_path))
    assert _rows(d) == {NAME: "closed"}
    with Catalogue.open(str(d)) as cat:
        rec = cat.get(NAME)
    assert rec is not None and rec.opened_ns == _opened(open_path)["opened_ns"]


def test_late_jobs_of_the_killed_capture_after_the_repair(left_open: Path) -> None:
    """Every job the killed capture's archiver may still run after the repair
    (opened, first packet, closed) leaves the catalogue naming only files on disk."""
    d, open_path = left_open, left_open / (NAME + ".open")
    killed, nxt = _Jobs(str(d), index=False), _Jobs(str(d), index=False)
    nxt._do(_repair(open_path))
    killed._do(_opened(open_path))
    killed._do({"kind": "first", "path": str(open_path), "first_ns": 1})
    size = os.path.getsize(d / NAME)
    with pytest.raises(OSError):  # serve() logs it: the file is not there any more
        killed._do(
            {
                "kind": "closed", "path": str(open_path), "packets": 1, "bytes": 1,
                "size": size, "first_ns": 1, "drops": 0, "ifdrops": 0, "closed_ns": 2,
                "last_ns": None, "entries": None,
            }
        )  # fmt: skip
    assert _rows(d) == {NAME: "closed"}
    assert {p.name for p in d.iterdir() if not p.name.startswith(".")} == {NAME}
