"""Archive file names: parse/format round trip, time order, sequence, never overwriting."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk.archive.naming import (
    TraceName,
    create_exclusive,
    finalise,
    highest_seq,
    parse_name,
    series_names,
)
from bulk.errors import ArchiveError

# Interface names as Linux allows them (no '/', no whitespace, at most 15 bytes);
# a name ending like a worker tag ("-w3") is ambiguous and left out.
interfaces = st.text(
    alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="-_.@"),
    min_size=1,
    max_size=15,
).filter(lambda s: not re.search(r"-w\d+$", s) and s not in (".", ".."))
times = st.integers(min_value=0, max_value=253402300799)  # up to 9999-12-31
suffixes = st.sampled_from(["", ".open", ".zst", ".gz"])


@given(times, interfaces, st.integers(1, 10**9), st.integers(0, 64), suffixes)
def test_parse_inverts_format(t: int, iface: str, seq: int, worker: int, suffix: str) -> None:
    name = TraceName(t, iface, seq, worker, suffix)
    assert parse_name(name.name) == name
    assert name.name.startswith("bulk-") and ".pcap" in name.name


@given(st.lists(st.tuples(times, st.integers(1, 999999)), min_size=2, max_size=20))
def test_names_sort_by_time_then_sequence(items: list[tuple[int, int]]) -> None:
    names = [TraceName(t, "eth0", seq) for t, seq in items]
    by_name = sorted(names, key=lambda n: n.name)
    assert [(n.time_s, n.seq) for n in by_name] == sorted((n.time_s, n.seq) for n in names)


def test_worker_zero_has_no_tag_and_others_do() -> None:
    assert "-w" not in TraceName(0, "eth0", 1).name
    assert TraceName(0, "eth0", 1, worker=3).name == "bulk-19700101T000000Z-eth0-w3-000001.pcap"
    assert parse_name("capture.pcap") is None
    assert parse_name("bulk-20260101T000000Z-eth0-000001.pcapng") is None


def test_create_exclusive_skips_every_used_sequence_number(tmp_path: Path) -> None:
    # The series already holds 3 (compressed, another time) and 4 (open).
    (tmp_path / TraceName(100, "eth0", 3, suffix=".zst").name).write_bytes(b"x")
    (tmp_path / TraceName(200, "eth0", 4, suffix=".open").name).write_bytes(b"y")
    (tmp_path / TraceName(300, "eth1", 5).name).write_bytes(b"other interface")
    path, name = create_exclusive(str(tmp_path), TraceName(400, "eth0", 3, suffix=".open"))
    assert name.seq == 5 and os.path.basename(path) == name.name
    assert os.path.getsize(path) == 0
    assert highest_seq(str(tmp_path), "eth0", 0) == 5
    assert highest_seq(str(tmp_path), "eth0", 1) == 0
    assert [n.seq for n in series_names(str(tmp_path), "eth0")] == [3, 4, 5]


def test_finalise_renames_and_never_overwrites(tmp_path: Path) -> None:
    open_path = tmp_path / "bulk-19700101T000000Z-eth0-000001.pcap.open"
    open_path.write_bytes(b"new")
    final = finalise(str(open_path))
    assert final == str(tmp_path / "bulk-19700101T000000Z-eth0-000001.pcap")
    assert not open_path.exists() and Path(final).read_bytes() == b"new"

    # A different file under the final name: refused, both kept.
    open_path.write_bytes(b"newer")
    with pytest.raises(ArchiveError, match="exists already"):
        finalise(str(open_path))
    assert Path(final).read_bytes() == b"new" and open_path.read_bytes() == b"newer"

    # The same file under both names (a crash between link and unlink): the open name goes.
    open_path.unlink()
    os.link(final, open_path)
    assert finalise(str(open_path)) == final
    assert not open_path.exists() and Path(final).read_bytes() == b"new"


@settings(max_examples=30)
@given(st.lists(st.integers(1, 50), max_size=8, unique=True), st.integers(1, 60))
def test_next_name_is_new_whatever_exists(used: list[int], start: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        for seq in used:
            Path(d, TraceName(seq * 7, "eth0", seq).name).write_bytes(b"keep")
        _path, name = create_exclusive(d, TraceName(999, "eth0", start, suffix=".open"))
        assert name.seq >= start and name.seq not in used
        for seq in used:  # untouched
            assert Path(d, TraceName(seq * 7, "eth0", seq).name).read_bytes() == b"keep"
