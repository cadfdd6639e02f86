"""`bulk info` against capinfos (Wireshark) on every bundled real trace."""

from __future__ import annotations

import gzip
import json
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.conftest import DATA, MANIFEST, require_tool, run_bulk

# capinfos' encapsulation names for the pcap link type numbers (a naming table,
# not expected results).
CAPINFOS_ENCAP = {"ether": 1, "linux-sll": 113, "linux-sll2": 276, "rawip": 101, "null": 0}
TRUNCATED = {e["file"] for e in MANIFEST if e["truncated_file"]}


def capinfos(path: Path) -> dict[str, Any]:
    exe = require_tool("capinfos")
    out = subprocess.run(
        [exe, "-T", "-r", "-M", "-c", "-d", "-E", "-a", "-e", "-S", str(path)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    _name, encap, packets, data_size, start, end = out.split("\t")
    return {
        "linktypes": [CAPINFOS_ENCAP[encap]],
        "packets": int(packets),
        "wire_bytes": int(data_size),  # capinfos sums wire lengths
        "min_ns": int(Decimal(start) * 1_000_000_000),
        "max_ns": int(Decimal(end) * 1_000_000_000),
    }


def info_json(*args: str | Path, input: bytes | None = None) -> tuple[dict[str, Any], int]:
    proc = run_bulk("info", "--json", *args, input=input)
    return json.loads(proc.stdout), proc.returncode


def comparable(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("linktypes", "packets", "wire_bytes", "min_ns", "max_ns")
    return {k: entry[k] for k in keys}


def test_info_matches_capinfos(trace: Path) -> None:
    doc, rc = info_json(trace)
    [entry] = doc["files"]
    assert comparable(entry) == capinfos(trace)
    assert entry["truncated"] == (trace.name in TRUNCATED)
    assert rc == (3 if trace.name in TRUNCATED else 0)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "stdin", "zstd-stdin"])
def test_info_same_through_compression_and_stdin(trace: Path, kind: str, tmp_path: Path) -> None:
    plain, plain_rc = info_json(trace)
    raw = trace.read_bytes()
    if kind == "gzip":
        target = tmp_path / (trace.name + ".gz")
        target.write_bytes(gzip.compress(raw))
        doc, rc = info_json(target)
    elif kind == "zstd":
        target = tmp_path / (trace.name + ".zst")
        subprocess.run(["zstd", "-q", "-o", str(target), str(trace)], check=True)
        doc, rc = info_json(target)
    elif kind == "stdin":
        doc, rc = info_json("-", input=raw)
    else:
        doc, rc = info_json("-", input=zstandard.ZstdCompressor().compress(raw))
    assert comparable(doc["files"][0]) == comparable(plain["files"][0])
    assert doc["files"][0]["truncated"] == plain["files"][0]["truncated"]
    assert rc == plain_rc


def test_directory_total_matches_capinfos_sum() -> None:
    doc, _rc = info_json(DATA)
    traces = sorted(DATA.glob("*.pcap*"))
    assert doc["total"]["files"] == len(traces)
    assert doc["total"]["packets"] == sum(capinfos(t)["packets"] for t in traces)


@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_trace_warns_in_one_line(name: str) -> None:
    proc = run_bulk("info", DATA / name)
    assert proc.returncode == 3
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "truncated" in lines[0]
    assert b"Traceback" not in proc.stderr


def test_random_file_is_one_line_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "random.bin"
    junk.write_bytes(bytes(range(251)) * 40)
    proc = run_bulk("info", junk)
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "not a pcap or pcapng trace" in lines[0]


def test_missing_file_and_bad_usage() -> None:
    proc = run_bulk("info", "/nonexistent/trace.pcap")
    assert proc.returncode == 2 and b"no such file" in proc.stderr
    proc = run_bulk("info")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    assert len(proc.stderr.decode().strip().splitlines()) == 1
