"""Fixtures shared by the fault suites."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def work() -> Iterator[Path]:
    """A directory of its own per test function (hypothesis examples share it:
    empty it with ``tests.faults.mutate.fresh``), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="bulk-fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
