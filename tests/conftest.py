"""Shared fixtures: the bundled real traces and a way to run the bulk CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

DATA = Path(__file__).parent / "data"
MANIFEST = json.loads((DATA / "manifest.json").read_text())
TRACES = sorted(DATA / entry["file"] for entry in MANIFEST)
TRACE_IDS = [p.name for p in TRACES]
BULK = [sys.executable, "-m", "bulk"]

# Timing never decides a test: a loaded 2-core CI machine must not fail a
# property because one example was slow. BULK_HYPOTHESIS=long runs more cases.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long", deadline=None, max_examples=2000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("BULK_HYPOTHESIS", "default"))


def run_bulk(
    *args: str | os.PathLike[str],
    input: bytes | None = None,
    check: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real command line in a subprocess (as an operator would)."""
    proc = subprocess.run(
        [*BULK, *map(str, args)],
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"bulk {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr.decode()}"
        )
    return proc


def require_tool(name: str) -> str:
    """The path of a reference tool; CI installs them all, so absence is a failure there."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"reference tool {name} is not installed (scripts/dev.sh installs it)")
        pytest.skip(f"reference tool {name} is not installed")
    return path


def tcpdump_count(path: str | os.PathLike[str]) -> int:
    """Packets tcpdump reads from a trace (the oracle), through zstdcat or zcat
    for a .zst or .gz; any read error fails the test."""
    cat = {".zst": "zstdcat", ".gz": "zcat"}.get(Path(path).suffix)
    data = None
    if cat is not None:
        data = subprocess.run(
            [require_tool(cat), str(path)], capture_output=True, timeout=120, check=True
        ).stdout
    proc = subprocess.run(
        [require_tool("tcpdump"), "-r", "-" if cat else str(path), "-nn", "-q", "-t"],
        input=data,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"tcpdump -r {path}: {proc.stderr.decode().strip()}"
    return len(proc.stdout.splitlines())


@pytest.fixture(params=TRACES, ids=TRACE_IDS)
def trace(request: pytest.FixtureRequest) -> Path:
    """Each bundled real trace in turn."""
    path: Path = request.param
    return path
