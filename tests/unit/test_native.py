"""The C accelerators (csrc/NAME.c -> bulk._NAME) and their loader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bulk import native

CSRC = Path(__file__).resolve().parents[2] / "csrc"
MODULES = sorted(p.stem for p in CSRC.glob("*.c"))


@pytest.mark.parametrize("name", MODULES)
def test_every_accelerator_is_built_where_required(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dev.sh test sets BULK_REQUIRE_NATIVE=1: CI must not fall back to Python unnoticed."""
    monkeypatch.delenv("BULK_NO_NATIVE", raising=False)
    module = native.load(name)
    if module is None and os.environ.get("BULK_REQUIRE_NATIVE") == "1":
        pytest.fail(f"bulk._{name} was not built from csrc/{name}.c")
    if module is None:
        pytest.skip(f"bulk._{name} not built (no C compiler?)")
    assert module.__name__ == f"bulk._{name}"


def test_no_native_forces_the_python_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULK_NO_NATIVE", "1")
    assert all(native.load(name) is None for name in [*MODULES, "absent"])


def test_a_missing_accelerator_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BULK_NO_NATIVE", raising=False)
    assert native.load("no_such_accelerator") is None
