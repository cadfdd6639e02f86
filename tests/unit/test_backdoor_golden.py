"""`bulk backdoor` over every corpus trace against the golden table
(tests/data/backdoor_golden.json; regenerate with `python -m tests.backdoor_golden`)."""

from __future__ import annotations

import json

import pytest

from bulk.cli import main
from tests import backdoor_golden as golden

TABLE = json.loads(golden.GOLDEN.read_text())
NAMES = [p.name for p in golden.traces()]


def test_table_covers_every_trace_and_the_manifest() -> None:
    assert sorted(TABLE["traces"]) == NAMES
    manifest = golden.manifest_expected()
    for name, entry in TABLE["traces"].items():
        assert entry["expected"] == manifest.get(name, []), name
    # The corpus has positives; the test below would be empty without them.
    assert sum(len(e["expected"]) for e in TABLE["traces"].values()) >= 9


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("name", NAMES)
def test_trace_matches_golden(name: str, fast: bool) -> None:
    rows, error = golden.analyze(golden.DATA / name, fast=fast)
    entry = TABLE["traces"][name]
    assert rows == entry["findings"]
    assert error == entry.get("read_error")


def test_precision_and_recall(capsys: pytest.CaptureFixture[str]) -> None:
    p, r, tp, reported, expected = golden.score(TABLE)
    with capsys.disabled():
        print(
            f"\nbackdoor golden: precision {p:.3f} ({tp}/{reported}), "
            f"recall {r:.3f} ({tp}/{expected})"
        )
    assert r == 1.0, "a service on a non-standard port in the corpus was missed"
    assert p == 1.0, "something was reported that the corpus does not have"


def test_cli_reports_only_non_standard(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(golden.DATA / n) for n in NAMES if "read_error" not in TABLE["traces"][n]]
    assert main(["backdoor", "--json", "-r", *paths]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = sorted(f"{o['service']}@{o['resp_p']}" for o in out)
    want = sorted(e for n in NAMES for e in TABLE["traces"][n]["expected"])
    assert got == want
    assert all(o["standard_port"] is False for o in out)
    for o in out:
        assert set(o) >= {
            "ts",
            "uid",
            "orig_h",
            "orig_p",
            "resp_h",
            "resp_p",
            "service",
            "evidence",
            "confidence",
        }
