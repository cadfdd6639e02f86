"""The command line over mutated real traces: one line on stderr and exit 0, 2 or
3, never a traceback, never a hang.

Most examples run ``bulk.cli.main`` in this process (what the console script
runs: only BulkError becomes a line, anything else would propagate here and
fail the test); a few run the real ``bulk`` process to check what an operator
sees. Each example has a deadline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_bulk
from tests.faults.harness import assert_clean_cli, examples, run_cli
from tests.faults.mutate import (
    Base,
    Pool,
    bases,
    compressed_bases,
    fresh,
    mutations,
    pick,
    write_case,
)

DEADLINE_S = 20.0
CLI_FUZZ = settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Base, ...]:
    return Pool(bases() + compressed_bases(tmp_path_factory.mktemp("zbases")))


def mutated_case(data: st.DataObject, work: Path, pool: tuple[Base, ...]) -> Path:
    base = pick(data, pool)
    return write_case(fresh(work), base, data.draw(mutations(base), label="mutated"))


@CLI_FUZZ
@given(data=st.data(), as_json=st.booleans())
def test_info(work: Path, pool: tuple[Base, ...], data: st.DataObject, as_json: bool) -> None:
    path = mutated_case(data, work, pool)
    res = run_cli(["info", *(["--json"] if as_json else []), str(path)], DEADLINE_S)
    if as_json and res.status != 0 and not res.stderr_lines:
        # --json reports an unreadable file in the document, not on stderr
        doc = json.loads(res.stdout)
        assert doc["errors"] or doc["total"]["truncated_files"], res.stdout
        assert res.status in (2, 3)
        return
    assert_clean_cli(res, "info")


@CLI_FUZZ
@given(data=st.data())
def test_slice(work: Path, pool: tuple[Base, ...], data: st.DataObject) -> None:
    path = mutated_case(data, work, pool)
    window = data.draw(st.sampled_from([["0"], ["+0", "+1"], ["+0.5"], ["0", "4000000000"]]))
    res = run_cli(["slice", *window, str(path), "-w", str(work / "out.pcap")], DEADLINE_S)
    assert_clean_cli(res, "slice")


@CLI_FUZZ
@given(data=st.data())
def test_extract(work: Path, pool: tuple[Base, ...], data: st.DataObject) -> None:
    path = mutated_case(data, work, pool)
    expr = data.draw(st.sampled_from(["tcp or udp", "host 10.0.0.1", "port 80", ""]))
    res = run_cli(
        ["extract", "-r", str(path), "-w", str(work / "out.pcap"), *([expr] if expr else [])],
        DEADLINE_S,
    )
    assert_clean_cli(res, "extract")


@CLI_FUZZ
@given(data=st.data())
def test_contents(work: Path, pool: tuple[Base, ...], data: st.DataObject) -> None:
    path = mutated_case(data, work, pool)
    out = work / "out"
    res = run_cli(["contents", "-q", "-r", str(path), "-o", str(out)], DEADLINE_S)
    assert_clean_cli(res, "contents")
    if out.exists():
        for p in out.iterdir():
            assert p.is_file() and not p.is_symlink()


@CLI_FUZZ
@given(data=st.data(), fast=st.booleans())
def test_backdoor(work: Path, pool: tuple[Base, ...], data: st.DataObject, fast: bool) -> None:
    path = mutated_case(data, work, pool)
    res = run_cli(
        ["backdoor", "--json", *([] if fast else ["--no-fast"]), "-r", str(path)], DEADLINE_S
    )
    assert_clean_cli(res, "backdoor")


@settings(CLI_FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_index_file(work: Path, pool: tuple[Base, ...], data: st.DataObject) -> None:
    path = mutated_case(data, work, pool)
    res = run_cli(["index", "-q", str(path)], DEADLINE_S)
    assert_clean_cli(res, "index")


@settings(CLI_FUZZ, max_examples=examples(100))
@given(data=st.data())
def test_compress_keeps_what_it_cannot_verify(
    work: Path, pool: tuple[Base, ...], data: st.DataObject
) -> None:
    """A damaged closed trace in the archive: compressed (with its damage noted) or
    skipped; the original is never lost and nothing half-written is left."""
    plain = tuple(b for b in pool if b.suffix in (".pcap", ".pcapng"))
    i = data.draw(st.integers(0, len(plain) - 1))
    mutated = data.draw(mutations(plain[i]))
    d = fresh(work)
    name = f"bulk-20260101T000000Z-eth0-000001{plain[i].suffix}"
    (d / name).write_bytes(mutated)
    res = run_cli(["compress", "--dir", str(d), "--older-than", "0"], DEADLINE_S)
    assert res.status in (0, 1, 2, 3), res.stderr
    assert "Traceback" not in res.stderr
    left = sorted(p.name for p in d.iterdir() if not p.name.startswith("."))
    assert left in ([name], [name + ".zst"], [name + ".zst", name + ".zst.idx"]), left
    if left == [name]:
        assert (d / name).read_bytes() == mutated  # kept as it was


@settings(CLI_FUZZ, max_examples=examples(12, 60))
@given(data=st.data(), command=st.sampled_from(["info", "contents", "backdoor", "extract"]))
def test_real_process(
    work: Path, pool: tuple[Base, ...], data: st.DataObject, command: str
) -> None:
    """What an operator sees: the real process, its exit status and stderr."""
    path = mutated_case(data, work, pool)
    args = {
        "info": ["info", str(path)],
        "contents": ["contents", "-q", "-r", str(path), "-o", str(work / "o")],
        "backdoor": ["backdoor", "-r", str(path)],
        "extract": ["extract", "-r", str(path), "-w", str(work / "x.pcap"), "tcp"],
    }[command]
    proc = run_bulk(*args, timeout=60)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode in (0, 2, 3), err
    assert "Traceback" not in err
    if proc.returncode:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"bulk {command}: "), err
