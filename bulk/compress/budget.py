"""Disk budgets as operators write them: ``80%`` of the filesystem, or a size (``500G``).

Sizes use the shared grammar of :func:`bulk.config.parse_size`.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from bulk.config import parse_size
from bulk.errors import UsageError


@dataclass(frozen=True)
class Budget:
    """``percent`` of a filesystem, or ``size`` bytes (exactly one is set)."""

    percent: float | None = None
    size: int | None = None

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return format_size(self.size or 0)


def parse_budget(text: str) -> Budget:
    """``'80%'`` -> Budget(percent=80.0); ``'500G'`` -> Budget(size=536870912000)."""
    raw = str(text).strip()
    if raw.endswith("%"):
        number = raw[:-1].strip()
        if not re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", number):
            raise UsageError(f"bad disk budget {text!r}: expected a percentage like 80%")
        pct = float(number)
        if not 0 < pct <= 100:
            raise UsageError(f"bad disk budget {text!r}: a percentage above 0 and at most 100")
        return Budget(percent=pct)
    size = parse_size(raw, what="disk budget")
    if size <= 0:
        raise UsageError(f"bad disk budget {text!r}: must be more than 0 bytes")
    return Budget(size=size)


def budget_arg(text: str) -> Budget:
    """argparse ``type=`` for a disk budget."""
    try:
        return parse_budget(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_size(n: int) -> str:
    """A size with binary units, as ``ls -h`` prints them (``1.5G``, ``812.0K``, ``97B``)."""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
