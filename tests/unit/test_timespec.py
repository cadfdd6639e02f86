"""Time specs and durations (bulk.timespec). tcpslice itself is the oracle in
tests/integration/test_timespec_tcpslice.py; here: our extensions and errors."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk.errors import UsageError
from bulk.timespec import (
    NS,
    TimeWindow,
    duration_arg,
    format_parseable,
    looks_like_timespec,
    needs_reference,
    parse_duration,
    parse_duration_ns,
    parse_timespec,
    resolve_window,
)

# 2013-03-07 21:42:06.869344 UTC, the first packet of zeek-http-get.pcap.
FIRST = 1362692526_869344000


@pytest.fixture(autouse=True)
def _utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture
def pacific() -> Iterator[None]:
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    yield


def test_manual_page_example_pacific(pacific: None) -> None:
    # tcpslice(1): 654321098.7654 is 1990y9m25d20h51m38s765400u in PDT.
    assert parse_timespec("1990y9m25d20h51m38s765400u", FIRST) == 654321098_765400000
    assert parse_timespec("654321098.7654", None) == 654321098_765400000
    base = 654321098_765400000
    # "21h36m" = 9:36PM on the same date; "26d1h54m" as an end, relative to the start.
    start = parse_timespec("21h36m", base)
    assert time.localtime(start // NS)[:6] == (1990, 9, 25, 21, 36, 0)
    end = parse_timespec("26d1h54m", base, is_end=True, start_ns=start)
    assert time.localtime(end // NS)[:6] == (1990, 9, 26, 1, 54, 0)
    # "+1h +1h10m": 38.7654 s after 9:51PM through 38.7654 s after 11:01PM.
    w = resolve_window("+1h", "+1h10m", base)
    assert w.start_ns == base + 3600 * NS
    assert w.end_ns == base + (3600 + 4200) * NS + 999  # inclusive: the whole microsecond


def test_raw_and_relative() -> None:
    assert parse_timespec("1362692527", None) == 1362692527 * NS
    assert parse_timespec("1362692527.5", None) == 1362692527_500000000
    assert parse_timespec("1362692527.000000001", None) == 1362692527_000000001
    assert parse_timespec("+200", FIRST) == FIRST + 200 * NS
    assert parse_timespec("+0.25", FIRST) == FIRST + NS // 4
    assert parse_timespec("+300", FIRST, is_end=True, start_ns=FIRST + 200 * NS) == FIRST + (
        500 * NS
    )


def test_broken_down_defaults() -> None:
    # Larger omitted units from the reference, smaller ones zero.
    assert parse_timespec("22h", FIRST) == 1362693600 * NS  # 2013-03-07 22:00:00
    assert parse_timespec("13h15m", FIRST) == 1362662100 * NS
    assert parse_timespec("5u", FIRST) == 1362692526 * NS + 5000  # only usec replaced
    assert parse_timespec("2013y", FIRST) == 1356998400 * NS  # 1 January
    assert parse_timespec("20y", FIRST) == 1577836800 * NS  # 2-digit year 2020
    assert parse_timespec("90y", FIRST) == 631152000 * NS  # 1990
    # m is a month only when a d follows directly.
    assert parse_timespec("2m5d", FIRST) == 1360022400 * NS  # 5 February
    assert parse_timespec("3m", FIRST) == 1362690180 * NS  # 21:03:00
    assert parse_timespec("13H15M", FIRST) == parse_timespec("13h15m", FIRST)


def test_relative_broken_down_normalises() -> None:
    # tcpslice 1.5 rejects these ("hour 26 is not valid"); bulk carries over.
    assert parse_timespec("+5h", FIRST) == FIRST + 5 * 3600 * NS
    assert parse_timespec("+30d", FIRST) == FIRST + 30 * 86400 * NS
    assert parse_timespec("+1m2d", FIRST) == parse_timespec("+33d", FIRST)  # 1 month of March
    assert parse_timespec("+999999u", FIRST) == FIRST + 999999000
    # Sub-microsecond digits of the reference survive a relative spec.
    assert parse_timespec("+1s", FIRST + 7) == FIRST + NS + 7


def test_iso8601() -> None:
    assert parse_timespec("2026-11-27T13:15:00Z", None) == 1795785300 * NS
    assert parse_timespec("2026-11-27T14:15:00+01:00", None) == 1795785300 * NS
    assert parse_timespec("2026-11-27T08:15-0500", None) == 1795785300 * NS
    assert parse_timespec("2026-11-27 13:15:00.123456789Z", None) == 1795785300_123456789
    assert parse_timespec("2026-11-27", None) == 1795737600 * NS


def test_iso8601_local(pacific: None) -> None:
    # November: PST, UTC-8.
    assert parse_timespec("2026-11-27T05:15:00", None) == 1795785300 * NS


def test_ago_and_now() -> None:
    now = 1795785300 * NS
    assert parse_timespec("10m ago", None, now_ns=now) == now - 600 * NS
    assert parse_timespec("2h30m ago", None, now_ns=now) == now - 9000 * NS
    assert parse_timespec("90s_ago", None, now_ns=now) == now - 90 * NS
    assert parse_timespec("now", None, now_ns=now) == now


@pytest.mark.parametrize(
    ("spec", "part"),
    [
        ("25h70m80s", "hour 25"),
        ("13x15m", "'x'"),
        ("13h15", "'15'"),
        ("1h2h", "'2h'"),
        ("2h3d", "'3d'"),
        ("5m2y", "'2y'"),
        ("1500y", "year 1500"),
        ("2070y", "2070"),
        ("2m30d", "day 30"),
        ("13m5d", "month 13"),
        ("12.5.3", "'.3'"),
        ("+", "'+'"),
        ("2026-13-01T00:00Z", "month must be in 1..12"),
        ("1.1234567891", "9 digits"),
        ("ago", "duration"),
        ("5x ago", "'x'"),
        ("", "empty"),
    ],
)
def test_malformed_names_the_part(spec: str, part: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_timespec(spec, FIRST)
    assert part in str(info.value)


def test_reference_required() -> None:
    assert needs_reference("13h15m")
    assert needs_reference("+5m")
    assert not needs_reference("1362692527.5")
    assert not needs_reference("2026-11-27T13:15:00Z")
    assert not needs_reference("10m ago")
    with pytest.raises(UsageError, match="first packet"):
        parse_timespec("13h15m", None)
    with pytest.raises(UsageError, match="the start"):
        parse_timespec("+5m", None, is_end=True)


def test_looks_like_timespec() -> None:
    for spec in (
        "13h15m",
        "+5m",
        "+0",
        "1362692527.5",
        "2026-11-27T13:15:00Z",
        "10m ago",
        "25h70m80s",
        "now",
    ):
        assert looks_like_timespec(spec), spec
    for name in ("trace.pcap", "/srv/bulk/x.pcap", "-", "13h15m.pcap", "chicago"):
        assert not looks_like_timespec(name), name


def test_microsecond_specs_cover_their_microsecond() -> None:
    # As tcpslice reads a nanosecond trace: a us-precise end includes the whole us.
    w = resolve_window("1362692527.000001", "1362692528.5", None)
    assert w.start_ns == 1362692527_000001000
    assert w.end_ns == 1362692528_500000999
    # Nanosecond digits make a bound exact.
    w = resolve_window("1362692527.000001234", "1362692528.500000001", None)
    assert (w.start_ns, w.end_ns) == (1362692527_000001234, 1362692528_500000001)
    w = resolve_window("+0", "+1", FIRST + 77)  # relative to a nanosecond first packet
    assert (w.start_ns, w.end_ns) == (FIRST, FIRST + NS + 999)
    assert resolve_window(None, "2026-11-27T13:15:00.123456789Z", 0).end_ns == 1795785300_123456789


def test_window() -> None:
    w = resolve_window(None, None, FIRST, FIRST + NS)
    assert w == TimeWindow(FIRST, FIRST + NS)
    assert w.contains(FIRST) and w.contains(FIRST + NS) and not w.contains(FIRST + NS + 1)
    assert resolve_window("+2", "+1", FIRST).start_ns == FIRST + 2 * NS
    assert resolve_window("+2", "1362692520", FIRST).empty


@given(st.integers(min_value=0, max_value=2**31 - 1), st.integers(0, 999_999))
@settings(max_examples=200, deadline=None)
def test_parseable_format_round_trips(sec: int, usec: int) -> None:
    ts = sec * NS + usec * 1000
    if time.gmtime(sec).tm_year > 2069:
        return
    assert parse_timespec(format_parseable(ts), 0) == ts


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("2h") == 7200
    assert parse_duration("7d") == 604800
    assert parse_duration("45") == 45
    assert parse_duration("0") == 0
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("1w") == 604800
    assert parse_duration_ns("250ms") == 250_000_000
    assert parse_duration(" 2H ") == 7200
    for bad in ("", "h", "5x", "-5s", "5 s", "1h-2m"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    with pytest.raises(UsageError, match="'x'"):
        parse_duration("5x")
    with pytest.raises(argparse.ArgumentTypeError):
        duration_arg("5x")
