"""Loads bulk's optional C accelerators (``csrc/NAME.c`` built as ``bulk._NAME``).

Every accelerator has a pure-Python twin that gives the same answer; the C one
is used when it was built. ``BULK_NO_NATIVE=1`` in the environment forces the
Python twins everywhere (tests use it to compare the two; an operator can use
it to rule the C code out).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str) -> ModuleType | None:
    """``bulk._NAME`` if it was built and is not disabled, else None."""
    if os.environ.get("BULK_NO_NATIVE", "") not in ("", "0"):
        return None
    try:
        return importlib.import_module(f"bulk._{name}")
    except ImportError:
        return None
