"""`bulk contents` against tcpflow on every bundled real trace.

For every TCP connection direction that `bulk contents` reassembled without a
gap, the bytes must equal tcpflow's file for that direction; every file
tcpflow wrote must belong to a connection `bulk contents` found; connections
with gaps must carry their markers. See tcpflow_oracle.py for why tcpflow
reads a scapy-normalised copy of the trace.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bulk.cli import main
from bulk.errors import EXIT_OK, EXIT_TRUNCATED
from tests.conftest import MANIFEST, TRACE_IDS, TRACES, run_bulk
from tests.integration.tcpflow_oracle import Key, normalise_for_tcpflow, run_tcpflow

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tcpflow") is None, reason="tcpflow not installed"),
]

TRUNCATED = {e["file"] for e in MANIFEST if e.get("truncated_file")}


def bulk_contents(trace: Path, out: Path) -> list[dict[str, Any]]:
    status = main(["contents", "-q", "-r", str(trace), "-o", str(out)])
    assert status == (EXIT_TRUNCATED if trace.name in TRUNCATED else EXIT_OK)
    lines = (out / "contents.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def directions(rec: dict[str, Any]) -> list[tuple[str, Key]]:
    o = (rec["orig_h"], rec["orig_p"])
    r = (rec["resp_h"], rec["resp_p"])
    return [("orig", (*o, *r)), ("resp", (*r, *o))]


@pytest.mark.parametrize("trace", TRACES, ids=TRACE_IDS)
def test_contents_equal_tcpflow(trace: Path, tmp_path: Path) -> None:
    records = bulk_contents(trace, tmp_path / "bulk")
    view = tmp_path / "view.pcap"
    n_tcp = normalise_for_tcpflow(trace, view)
    oracle = run_tcpflow(view, tmp_path / "tcpflow") if n_tcp else {}

    ours: dict[Key, list[tuple[dict[str, Any], str]]] = {}
    for rec in records:
        for side, key in directions(rec):
            ours.setdefault(key, []).append((rec, side))

    compared = 0
    for key, uses in ours.items():
        with_data = [(r, s) for r, s in uses if r[f"{s}_bytes"] or r[f"{s}_gaps"]]
        theirs = oracle.get(key, [])
        if any(r[f"{s}_gaps"] for r, s in with_data):
            for r, s in with_data:  # holes: our file shows each one as a marker
                body = (tmp_path / "bulk" / r[f"{s}_file"]).read_bytes()
                assert body.count(b"<<gap ") >= r[f"{s}_gaps"]
            continue
        assert len(theirs) == len(with_data), f"{key}: tcpflow {theirs}, bulk {len(with_data)}"
        for (rec, side), path in zip(with_data, theirs, strict=True):
            mine = (tmp_path / "bulk" / rec[f"{side}_file"]).read_bytes()
            assert mine == path.read_bytes(), f"{key} differs from {path.name}"
            assert len(mine) == rec[f"{side}_bytes"]
            compared += 1
    for key, paths in oracle.items():
        assert key in ours, f"tcpflow wrote {paths[0].name}, bulk found no such connection"
    if oracle:
        assert compared > 0


def test_shuffled_trace_gives_the_same_contents_as_the_ordered_one(tmp_path: Path) -> None:
    data = Path(TRACES[0]).parent
    a = bulk_contents(data / "test5-lines.pcap", tmp_path / "a")
    b = bulk_contents(data / "test5-lines-randomized.pcap", tmp_path / "b")
    assert len(a) == len(b) == 1
    for side in ("orig", "resp"):
        assert a[0][f"{side}_gaps"] == b[0][f"{side}_gaps"] == 0
        fa = (tmp_path / "a" / a[0][f"{side}_file"]).read_bytes()
        fb = (tmp_path / "b" / b[0][f"{side}_file"]).read_bytes()
        assert fa == fb and len(fa) > 100


def test_snaplen_truncated_trace_reports_gaps_and_no_fake_bytes(tmp_path: Path) -> None:
    data = Path(TRACES[0]).parent
    recs = bulk_contents(data / "truncated-header.pcap", tmp_path / "o")
    [rec] = recs
    assert rec["orig_gaps"] >= 1 and rec["resp_gaps"] >= 1
    assert rec["orig_gap_bytes"] > 0 and rec["resp_gap_bytes"] > 0
    body = (tmp_path / "o" / rec["resp_file"]).read_bytes()
    assert b"<<gap " in body


@pytest.mark.parametrize("name", ["irc-dcc-send.pcapng", "zeek-http-get.pcap"])
def test_stdin_gives_the_same_contents_as_the_file(name: str, tmp_path: Path) -> None:
    trace = Path(TRACES[0]).parent / name
    proc = run_bulk("contents", "-q", "-r", "-", "-o", tmp_path / "stdin", input=trace.read_bytes())
    assert proc.returncode == 0, proc.stderr
    from_file = bulk_contents(trace, tmp_path / "file")
    from_stdin = [
        json.loads(x) for x in (tmp_path / "stdin" / "contents.jsonl").read_text().splitlines()
    ]
    assert from_stdin == from_file and from_file
    for rec in from_file:
        for side in ("orig", "resp"):
            if rec[f"{side}_file"]:
                a = (tmp_path / "file" / rec[f"{side}_file"]).read_bytes()
                assert a == (tmp_path / "stdin" / rec[f"{side}_file"]).read_bytes()
