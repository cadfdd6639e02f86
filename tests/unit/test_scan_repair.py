"""Scanning traces (two independent readers must agree) and repairing crash leftovers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulk.archive.repair import repair_open_file
from bulk.archive.scan import _scan_python, scan_trace
from bulk.errors import TraceError
from bulk.trace import open_trace
from tests.conftest import DATA

MANIFEST = {e["file"]: e for e in json.loads((DATA / "manifest.json").read_text())}
# Little-endian microsecond pcap: what libpcap's batch reader scans.
FAST = [
    f
    for f in sorted(MANIFEST)
    if f.endswith(".pcap") and (DATA / f).read_bytes()[:4] == bytes.fromhex("d4c3b2a1")
]


@pytest.mark.parametrize("name", FAST)
def test_libpcap_scan_equals_python_scan(name: str) -> None:
    path = str(DATA / name)
    fast = scan_trace(path, every=512)
    slow = _scan_python(path, every=512, stop_at_zero=False)
    assert fast.format == "pcap"
    for field in ("packets", "bytes", "end_offset", "first_ns", "last_ns", "min_ns", "max_ns"):
        assert getattr(fast, field) == getattr(slow, field), field
    assert fast.entries == slow.entries
    assert (fast.error is None) == (slow.error is None)
    assert fast.packets == MANIFEST[name]["packets"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_trace_scans(name: str) -> None:
    scan = scan_trace(str(DATA / name))
    assert scan.packets == MANIFEST[name]["packets"]


def _record_ends(path: Path) -> list[int]:
    """Byte offsets where each whole record of a pcap ends, from the trace reader."""
    ends = [24]
    with open_trace(str(path)) as reader:
        for pkt in reader:
            ends.append(ends[-1] + 16 + len(pkt.data))
    return ends


SMTP = DATA / "zeek-smtp.pcap"
SMTP_BYTES = SMTP.read_bytes()
SMTP_ENDS = _record_ends(SMTP)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(SMTP_BYTES)))
def test_repair_keeps_every_whole_record_and_finalises(tmp_path: Path, cut: int) -> None:
    d = tmp_path / str(cut)
    d.mkdir()
    open_path = d / "bulk-20260101T000000Z-eth0-000001.pcap.open"
    open_path.write_bytes(SMTP_BYTES[:cut])
    done = repair_open_file(str(open_path), linktype=1, snaplen=262144)
    final = Path(done.final_path)
    assert not open_path.exists() and final.name == open_path.name[:-5]
    whole = [e for e in SMTP_ENDS if e <= cut]
    data = final.read_bytes()
    if cut < 24:
        assert done.wrote_header and len(data) == 24 and done.scan.packets == 0
    else:
        assert data == SMTP_BYTES[: whole[-1]]
        assert done.scan.packets == len(whole) - 1
        assert done.cut_bytes == cut - whole[-1]
    with open_trace(str(final)) as reader:  # reads to the end without error
        assert sum(1 for _ in reader) == done.scan.packets


def test_repair_cuts_a_zero_filled_tail(tmp_path: Path) -> None:
    open_path = tmp_path / "bulk-20260101T000000Z-eth0-000002.pcap.open"
    open_path.write_bytes(SMTP_BYTES + bytes(5000))
    done = repair_open_file(str(open_path), 1, 262144)
    assert done.scan.zero_tail and done.scan.packets == MANIFEST["zeek-smtp.pcap"]["packets"]
    assert Path(done.final_path).read_bytes() == SMTP_BYTES


def test_repair_of_an_already_final_file_only_drops_the_open_name(tmp_path: Path) -> None:
    final = tmp_path / "bulk-20260101T000000Z-eth0-000003.pcap"
    final.write_bytes(SMTP_BYTES)
    open_path = tmp_path / (final.name + ".open")
    os.link(final, open_path)
    done = repair_open_file(str(open_path), 1, 262144)
    assert not open_path.exists() and final.read_bytes() == SMTP_BYTES
    assert done.scan.packets == 125 and done.cut_bytes == 0


@pytest.mark.parametrize("content", [b"\x5a" * 100, b"GARBAGE!" * 512], ids=["short", "long"])
def test_repair_leaves_a_file_that_is_not_a_pcap(tmp_path: Path, content: bytes) -> None:
    open_path = tmp_path / "bulk-20260101T000000Z-eth0-000004.pcap.open"
    # Not zeros: a zero-filled header is what a power loss leaves, and is repaired
    # (tests/faults/test_regressions.py).
    open_path.write_bytes(content)
    with pytest.raises(TraceError):
        repair_open_file(str(open_path), 1, 262144)
    assert open_path.read_bytes() == content
