"""tcpslice -d is the oracle for every time spec form tcpslice accepts.

``tcpslice -d START [END] FILE`` prints the window it resolved; bulk.timespec
must resolve the same window, in several time zones (DST, half-hour offsets).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bulk.timespec import format_raw, resolve_window

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tcpslice") is None, reason="tcpslice not installed"),
]

DATA = Path(__file__).resolve().parents[1] / "data"
TRACE = DATA / "zeek-http-get.pcap"
ZONES = ("UTC", "America/Los_Angeles", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/Berlin")


def _first_last(path: Path) -> tuple[int, int]:
    out = subprocess.run(["tcpslice", "-R", str(path)], capture_output=True, text=True, check=True)
    _name, first, last = out.stdout.split()
    return _raw_to_ns(first), _raw_to_ns(last)


def _raw_to_ns(raw: str) -> int:
    sec, _, usec = raw.partition(".")
    return int(sec) * 1_000_000_000 + int(usec.ljust(6, "0")) * 1000


@pytest.fixture
def zone() -> Iterator[None]:
    old = os.environ.get("TZ")
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def _tcpslice_window(args: list[str], tz: str) -> tuple[str, str] | None:
    env = dict(os.environ, TZ=tz)
    out = subprocess.run(
        ["tcpslice", "-d", *args, str(TRACE)], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        return None
    lines = dict(line.split("\t") for line in out.stdout.splitlines())
    # A relative "+Nu" may leave tcpslice with an unnormalised timeval
    # ("1362692526.1000000"): compare the instant it means.
    return _normal(lines["start"]), _normal(lines["stop"])


def _normal(raw: str) -> str:
    sec, _, usec = raw.partition(".")
    return format_raw(int(sec) * 1_000_000_000 + int(usec) * 1000)


def _bulk_window(args: list[str], tz: str) -> tuple[str, str]:
    os.environ["TZ"] = tz
    time.tzset()
    first, last = _first_last(TRACE)
    w = resolve_window(args[0], args[1] if len(args) > 1 else None, first, last)
    assert w.start_ns is not None and w.end_ns is not None
    return format_raw(w.start_ns), format_raw(w.end_ns)


MANUAL_CASES = [
    ["13h15m", "+5m"],
    ["21h36m", "26d1h54m"],
    ["22h", "+1h10m"],
    ["+1h", "+1h10m"],
    ["+0", "+1h"],
    ["+200", "+300"],
    ["1990y9m25d20h51m38s765400u"],
    ["654321098.7654"],
    ["1362692526.9", "1362692527.000001"],
    ["5u"],
    ["2m5d", "3m"],
    ["20y"],
    ["13y3m7d"],
    ["+0.5", "+0.000001"],
    ["42s", "+1s"],
]


@pytest.mark.parametrize("args", MANUAL_CASES, ids=" ".join)
@pytest.mark.parametrize("tz", ZONES)
def test_same_window_as_tcpslice(args: list[str], tz: str, zone: None) -> None:
    expected = _tcpslice_window(args, tz)
    if expected is None:
        # Only a relative broken-down sum past a field's range (23h + 1h10m)
        # is refused by tcpslice; bulk normalises it (docs/timespec.md).
        assert any(a.startswith("+") and a[-1].isalpha() for a in args), args
        return
    assert _bulk_window(args, tz) == expected


_RANGES = {
    "y": (2000, 2030),
    "d": (1, 28),
    "h": (0, 23),
    "m": (0, 59),
    "s": (0, 59),
    "u": (0, 999999),
}


@st.composite
def _spec(draw: st.DrawFn) -> str:
    """A ymdhmsu spec tcpslice accepts: a contiguous run of units, valid values."""
    units = ["y", "mo", "d", "h", "mi", "s", "u"]
    i = draw(st.integers(0, len(units) - 1))
    j = draw(st.integers(i, len(units) - 1))
    parts = []
    for unit in units[i : j + 1]:
        if unit == "mo":
            parts.append(f"{draw(st.integers(1, 12))}m")
            continue
        letter = "m" if unit == "mi" else unit
        low, high = _RANGES[letter]
        parts.append(f"{draw(st.integers(low, high))}{letter}")
    spec = "".join(parts)
    # A month token must be followed directly by a day to mean a month.
    if "mo" in units[i : j + 1] and "d" not in units[i : j + 1]:
        return spec.rsplit("m", 1)[0] + f"m{draw(st.integers(1, 28))}d"
    return spec


@given(spec=_spec(), tz=st.sampled_from(ZONES), plus=st.booleans())
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_specs_match_tcpslice(spec: str, tz: str, plus: bool, zone: None) -> None:
    args = ["+0", "+" + spec] if plus else [spec]
    # tcpslice adds N-1 months for a relative "+Nm...d" (it stores months
    # 0-based and adds the stored value); bulk adds N (docs/timespec.md).
    assume(not (plus and re.search(r"\d+m\d+d", spec)))
    expected = _tcpslice_window(args, tz)
    if expected is None:
        # tcpslice refuses relative sums that overflow a field (hour 26); bulk
        # normalises them instead (documented in docs/timespec.md).
        assert plus
        return
    assert _bulk_window(args, tz) == expected, args
