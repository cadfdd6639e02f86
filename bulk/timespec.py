"""Time specifications and durations, shared by every command with a time window.

The grammar is tcpslice's, plus ISO 8601 and "N ago" (see docs/timespec.md):

``sssssssss[.fffffffff]``
    Seconds since the epoch (UTC), as ``tcpdump -tt`` prints them; up to nine
    fractional digits (tcpslice accepts six).
``+N[.fff]``
    N seconds after the reference: the first packet for a start, the start for
    an end.
``[Ny][Nm][Nd][Nh][Nm][Ns][Nu]``
    Broken-down local time, units in decreasing order, each at most once; ``m``
    is a month only when a ``d`` follows it, otherwise a minute. Omitted units
    larger than the first one given come from the reference time; omitted
    smaller units are zero (days: 1). ``y`` takes 2 or 4 digits (1970-2069).
``+[Ny][Nm][Nd][Nh][Nm][Ns][Nu]``
    Calendar offset added to the reference time (``+1h10m``).
``YYYY-MM-DD[THH:MM[:SS[.fffffffff]]][Z|+HH:MM]``
    ISO 8601; without an offset, local time. A space may replace the ``T``.
``DURATION ago``, ``now``
    Relative to the wall clock (``10m ago``, ``2h30m ago``).

Durations (``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``1h30m``, ``1.5h``; a bare
number is seconds) are parsed by :func:`parse_duration`.

A malformed spec raises :class:`bulk.errors.UsageError` naming the offending part.
"""

from __future__ import annotations

import argparse
import itertools
import re
import time
from typing import NamedTuple

from bulk.errors import UsageError

NS = 1_000_000_000

# tcpslice's unit ranks: a ymdhmsu spec lists units in strictly decreasing rank.
_USEC, _SEC, _MIN, _HOUR, _DAY, _MONTH, _YEAR = range(7)
_UNIT_NAMES = ("microsecond", "second", "minute", "hour", "day", "month", "year")
_LETTER_RANK = {"y": _YEAR, "d": _DAY, "h": _HOUR, "m": _MIN, "s": _SEC, "u": _USEC}
_INT32_MAX = 2**31 - 1

# Patterns are compiled on first use (re's cache): compiling all of them costs
# ~3 ms at import, paid by every command that resolves a time.
_RAW_PAT = r"(\d+)(?:\.(\d+))?"
_UNIT_PAT = r"(\d+)([A-Za-z])"
_ISO_PAT = (
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[Tt ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?"
    r"(?P<tz>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


def _iso_match(text: str) -> re.Match[str] | None:
    if text[4:5] != "-":  # not YYYY-...: spare the pattern (most specs are not ISO)
        return None
    return re.fullmatch(_ISO_PAT, text)


def _match_at(pattern: str, text: str, pos: int) -> re.Match[str] | None:
    return re.compile(pattern).match(text, pos)


_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": NS,
    "m": 60 * NS,
    "h": 3600 * NS,
    "d": 86400 * NS,
    "w": 7 * 86400 * NS,
}
_DURATION_PAT = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|ms|s|m|h|d|w)"


class TimeWindow(NamedTuple):
    """A resolved window, inclusive at both ends as tcpslice's; None is unbounded."""

    start_ns: int | None
    end_ns: int | None

    def contains(self, ts_ns: int) -> bool:
        if self.start_ns is not None and ts_ns < self.start_ns:
            return False
        return self.end_ns is None or ts_ns <= self.end_ns

    @property
    def empty(self) -> bool:
        return self.start_ns is not None and self.end_ns is not None and self.end_ns < self.start_ns


# -- classification -------------------------------------------------------------


def _is_raw(text: str) -> bool:
    return re.fullmatch(_RAW_PAT, text) is not None


def _tokens(text: str) -> list[tuple[int, int, str]] | None:
    """(amount, rank, source) per ymdhmsu token, or None if ``text`` is not of that form."""
    pos = 0
    out: list[tuple[int, int, str]] = []
    while pos < len(text):
        m = _match_at(_UNIT_PAT, text, pos)
        if m is None:
            return None
        letter = m.group(2).lower()
        if letter not in _LETTER_RANK:
            return None
        out.append((int(m.group(1)), _LETTER_RANK[letter], m.group(0)))
        pos = m.end()
    return out or None


def _disambiguate(tokens: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """tcpslice's rule: an ``m`` directly followed by a ``d`` is a month."""
    out = list(tokens)
    for i in range(len(out) - 1):
        if out[i][1] == _MIN and out[i + 1][1] == _DAY:
            out[i] = (out[i][0], _MONTH, out[i][2])
    return out


_AGO_PAT = r"(?P<d>[0-9.]+[A-Za-z]*(?:[0-9.]+[A-Za-z]*)*|)[\s_]*ago"


def _strip_ago(text: str) -> str | None:
    """The duration of ``10m ago`` (or ``10m_ago``), or None if not that form."""
    t = text.strip()
    if not t.lower().endswith("ago"):
        return None
    m = re.fullmatch(_AGO_PAT, t, re.IGNORECASE)
    if m is None or (m.group("d") and not re.search(r"[\s_]ago$", t, re.IGNORECASE)):
        return None
    return m.group("d")


def looks_like_timespec(text: str) -> bool:
    """True if ``text`` has the shape of a time spec (used to tell times from files).

    As in tcpslice, shape decides: ``25h70m80s`` is a (bad) time, not a file name.
    """
    t = text.strip()
    if not t:
        return False
    if t.lower() == "now" or _strip_ago(t) is not None:
        return True
    if _iso_match(t):
        return True
    if t.startswith("+"):
        t = t[1:]
    return _is_raw(t) or _tokens(t) is not None


def needs_reference(text: str) -> bool:
    """True if resolving ``text`` needs a reference time (first packet or start).

    Raw epoch seconds, ISO 8601, ``now`` and ``... ago`` do not; relative
    ``+N`` and broken-down ``13h15m`` forms do. Lets a caller skip finding
    the first packet when no spec needs it.
    """
    t = text.strip()
    if t.lower() == "now" or _strip_ago(t) is not None or _iso_match(t):
        return False
    if t.startswith("+"):
        return True
    return not _is_raw(t)


# -- parsing ----------------------------------------------------------------------


def _frac_ns(digits: str | None, text: str) -> int:
    if not digits:
        return 0
    if len(digits) > 9:
        raise UsageError(
            f"bad time {text!r}: fraction {digits!r} has more than 9 digits (nanoseconds)"
        )
    return int(digits.ljust(9, "0"))


def _raw_ns(body: str, text: str) -> int:
    m = re.fullmatch(_RAW_PAT, body)
    assert m is not None
    return int(m.group(1)) * NS + _frac_ns(m.group(2), text)


def _local_fields(ts_ns: int) -> list[int]:
    """[usec, sec, min, hour, mday, mon(1-12), year] of ``ts_ns`` in local time."""
    sec, rem = divmod(ts_ns, NS)
    lt = time.localtime(sec)
    return [rem // 1000, lt.tm_sec, lt.tm_min, lt.tm_hour, lt.tm_mday, lt.tm_mon, lt.tm_year]


def _sub_us_ns(ts_ns: int) -> int:
    return ts_ns % 1000


def _local_to_ns(fields: list[int]) -> int:
    """Local [usec, sec, min, hour, mday, mon, year] (values may overflow, mktime
    normalises them) to epoch ns."""
    from datetime import datetime, timedelta  # noqa: PLC0415 - 2 ms, not for raw times

    usec, second, minute, hour, day, month, year = fields
    y = year + (month - 1) // 12
    mo = (month - 1) % 12 + 1
    try:
        naive = datetime(y, mo, 1) + timedelta(
            days=day - 1, hours=hour, minutes=minute, seconds=second
        )
    except (OverflowError, ValueError) as exc:
        raise UsageError(f"time out of range ({exc})") from None
    # mktime with tm_isdst=-1: the zone's offset at that local time.
    epoch = int(time.mktime(naive.timetuple()))
    return epoch * NS + usec * 1000


def _year_value(amount: int, text: str, part: str) -> int:
    if 100 <= amount < 1970:
        raise UsageError(f"bad time {text!r}: can't handle year {amount} in {part!r}")
    if amount < 100:  # 2 digits: 70-99 are 19xx, 00-69 are 20xx
        return 1900 + amount if amount >= 70 else 2000 + amount
    return amount


def _parse_broken_down(body: str, text: str, base_ns: int, delta: bool) -> int:
    toks = _tokens(body)
    assert toks is not None
    if len(toks) > 7:
        raise UsageError(f"bad time {text!r}: more than 7 fields")
    toks = _disambiguate(toks)
    for (_a, r1, s1), (_b, r2, s2) in itertools.pairwise(toks):
        if r1 <= r2:
            raise UsageError(
                f"bad time {text!r}: {s2!r} ({_UNIT_NAMES[r2]}) after {s1!r} "
                f"({_UNIT_NAMES[r1]}): give each unit once, largest first"
            )
    for amount, _rank, part in toks:
        if amount > _INT32_MAX:
            raise UsageError(f"bad time {text!r}: {part!r} is too large")
    base = _local_fields(base_ns)
    if delta:
        f = list(base)
        for amount, rank, _part in toks:
            f[rank] += amount
        # Keep the reference's sub-microsecond digits: "+1h" is exactly one hour later.
        return _local_to_ns(f) + _sub_us_ns(base_ns)
    given: dict[int, tuple[int, str]] = {rank: (amount, part) for amount, rank, part in toks}
    largest = toks[0][1]
    f = [0] * 7
    for rank in range(_YEAR, _USEC - 1, -1):
        if rank in given:
            f[rank] = given[rank][0]
        elif rank > largest:
            f[rank] = base[rank]  # larger than the first unit given: from the reference
        else:
            f[rank] = 1 if rank in (_DAY, _MONTH) else 0  # January, the 1st
    if _YEAR in given:
        f[_YEAR] = _year_value(f[_YEAR], text, given[_YEAR][1])
    usec, sec, minute, hour, mday, mon, year = f
    _check_field(text, given, _MONTH, mon, low=1, high=12)
    dim = _days_in_month(year, mon) if 1 <= mon <= 12 else 31
    _check_field(text, given, _DAY, mday, low=1, high=dim)
    _check_field(text, given, _HOUR, hour, low=0, high=23)
    _check_field(text, given, _MIN, minute, low=0, high=59)
    _check_field(text, given, _SEC, sec, low=0, high=59)
    _check_field(text, given, _USEC, usec, low=0, high=999_999)
    if not 1970 <= year <= 2069 and _YEAR in given:
        raise UsageError(f"bad time {text!r}: year {year} is outside 1970-2069")
    return _local_to_ns(f)


def _days_in_month(year: int, month: int) -> int:
    from datetime import datetime, timedelta  # noqa: PLC0415 - 2 ms, not for raw times

    nxt = datetime(year + month // 12, month % 12 + 1, 1)
    return (nxt - timedelta(days=1)).day


def _check_field(
    text: str, given: dict[int, tuple[int, str]], rank: int, value: int, *, low: int, high: int
) -> None:
    if not low <= value <= high:
        part = given[rank][1] if rank in given else ""
        where = f" in {part!r}" if part else ""
        raise UsageError(
            f"bad time {text!r}: {_UNIT_NAMES[rank]} {value} is not valid{where} ({low}-{high})"
        )


def _parse_iso(m: re.Match[str], text: str) -> int:
    from datetime import UTC, datetime, timedelta, timezone  # noqa: PLC0415 - 2 ms, not for raw times

    g = m.groupdict()
    try:
        year, month, day = int(g["y"]), int(g["mo"]), int(g["d"])
        hour = int(g["h"] or 0)
        minute = int(g["mi"] or 0)
        sec = int(g["s"] or 0)
        frac = _frac_ns(g["f"], text)
        naive = datetime(year, month, day, hour, minute, sec)
    except ValueError as exc:
        raise UsageError(f"bad time {text!r}: {exc}") from None
    tz = g["tz"]
    if tz is None:
        return int(time.mktime(naive.timetuple())) * NS + frac
    if tz in ("Z", "z"):
        offset = timedelta(0)
    else:
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        oh, om = int(digits[:2]), int(digits[2:4] or 0)
        if oh > 23 or om > 59:
            raise UsageError(f"bad time {text!r}: bad UTC offset {tz!r}")
        offset = sign * timedelta(hours=oh, minutes=om)
    aware = naive.replace(tzinfo=timezone(offset))
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * NS + frac


def parse_timespec(
    text: str,
    ref_ns: int | None,
    *,
    is_end: bool = False,
    start_ns: int | None = None,
    now_ns: int | None = None,
) -> int:
    """Resolve one time spec to nanoseconds since the epoch.

    ``ref_ns`` is the reference time: for a start, the first packet's time
    (the earliest over all inputs); for an end (``is_end=True``) the resolved
    start, given as ``start_ns`` (``ref_ns`` is used when ``start_ns`` is
    None). A spec that needs a reference when none is given, or a malformed
    spec, raises :class:`UsageError`. ``now_ns`` fixes the wall clock for
    ``ago`` forms (tests).
    """
    t = text.strip()
    if not t:
        raise UsageError("empty time specification")
    base = start_ns if is_end and start_ns is not None else ref_ns
    what = "the start" if is_end else "the first packet"
    if t.lower() == "now":
        return time.time_ns() if now_ns is None else now_ns
    ago = _strip_ago(t)
    if ago is not None:
        if not ago:
            raise UsageError(f"bad time {text!r}: 'ago' needs a duration before it")
        dur = parse_duration_ns(ago, what=f"time {text!r}")
        return (time.time_ns() if now_ns is None else now_ns) - dur
    iso = _iso_match(t)
    if iso is not None:
        return _parse_iso(iso, text)
    delta = t.startswith("+")
    body = t[1:] if delta else t
    if not body:
        raise UsageError(f"bad time {text!r}: '+' needs an amount after it")
    if _is_raw(body):
        if not delta:
            return _raw_ns(body, text)
        if base is None:
            raise UsageError(f"time {text!r} is relative to {what}, which is not known here")
        return base + _raw_ns(body, text)
    if _tokens(body) is not None:
        if base is None:
            raise UsageError(
                f"time {text!r} takes its missing fields from {what}, which is not known here"
            )
        return _parse_broken_down(body, text, base, delta)
    raise UsageError(_explain(text, body))


def _explain(text: str, body: str) -> str:
    """Name the part of a malformed spec where parsing stops."""
    if "-" in body[:5] or ":" in body:
        return f"bad time {text!r}: not ISO 8601 (YYYY-MM-DD[THH:MM[:SS[.f]]][Z|+HH:MM])"
    m = re.match(r"\d+(?:\.\d*)?", body)
    if m is not None and m.end() < len(body) and "." in m.group(0):
        return (
            f"bad time {text!r}: problem starting at {body[m.end() :]!r} "
            "(seconds.fraction takes digits only)"
        )
    pos = 0
    while pos < len(body):
        tm = _match_at(_UNIT_PAT, body, pos)
        if tm is None or tm.group(2).lower() not in _LETTER_RANK:
            rest = body[pos:]
            if tm is not None:
                return (
                    f"bad time {text!r}: unknown unit {tm.group(2)!r} in {tm.group(0)!r} "
                    "(units: y m d h m s u)"
                )
            if rest[:1].isdigit():
                return f"bad time {text!r}: {rest!r} has no unit (units: y m d h m s u)"
            return f"bad time {text!r}: problem starting at {rest!r}"
        pos = tm.end()
    return f"bad time {text!r}: not a time specification"


def spec_resolution_ns(text: str) -> int:
    """The unit a spec is given in: 1 ns if it has more than six fractional
    digits (or is ``now``/``ago``), else 1 us, the finest unit tcpslice knows."""
    t = text.strip()
    if t.lower() == "now" or _strip_ago(t) is not None:
        return 1
    iso = _iso_match(t)
    if iso is not None:
        return 1 if len(iso.group("f") or "") > 6 else 1000
    m = re.fullmatch(_RAW_PAT, t.lstrip("+"))
    if m is not None and len(m.group(2) or "") > 6:
        return 1
    return 1000


def resolve_window(
    start: str | None,
    end: str | None,
    first_ns: int | None,
    last_ns: int | None = None,
    *,
    now_ns: int | None = None,
) -> TimeWindow:
    """Resolve a START/END pair as tcpslice does.

    ``start`` is relative to ``first_ns`` (the earliest first packet of the
    inputs); ``end`` is relative to the resolved start. An omitted start is
    the first packet (or unbounded if that is unknown); an omitted end is
    ``last_ns`` (or unbounded). Both ends are inclusive, and a time given to
    the microsecond covers that whole microsecond (as tcpslice, which reads
    nanosecond traces at microsecond resolution): the start is rounded down
    and the end extended to the microsecond's last nanosecond.
    """
    start_ns = parse_timespec(start, first_ns, now_ns=now_ns) if start is not None else first_ns
    if end is not None:
        end_ns: int | None = parse_timespec(
            end, first_ns, is_end=True, start_ns=start_ns, now_ns=now_ns
        )
        res = spec_resolution_ns(end)
        assert end_ns is not None
        end_ns = end_ns - end_ns % res + res - 1
    else:
        end_ns = last_ns
    if start is not None and start_ns is not None:
        start_ns -= start_ns % spec_resolution_ns(start)
    return TimeWindow(start_ns, end_ns)


# -- durations -----------------------------------------------------------------------


def parse_duration_ns(text: str, *, what: str | None = None) -> int:
    """A duration in nanoseconds: ``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``1h30m``,
    ``1.5h``, ``250ms``; a bare number is seconds. Raises UsageError if malformed."""
    raw = text.strip()
    label = what if what is not None else f"duration {raw!r}"
    t = raw.lower()
    if not t:
        raise UsageError(f"bad {label}: empty")
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", t):
        return _decimal_ns(t, NS)
    total = 0
    pos = 0
    hint = "(e.g. 90s, 30m, 2h, 7d, 1w, 1h30m; a bare number is seconds)"
    while pos < len(t):
        m = _match_at(_DURATION_PAT, t, pos)
        if m is None:
            num = re.match(r"\d+(?:\.\d*)?|\.\d+", t[pos:])
            if num is None:
                raise UsageError(f"bad {label}: problem starting at {raw[pos:]!r} {hint}")
            unit_at = pos + num.end()
            if unit_at == len(t):
                raise UsageError(f"bad {label}: {raw[pos:]!r} has no unit {hint}")
            unit = re.match(r"[a-z]*", t[unit_at:])
            bad = raw[unit_at : unit_at + max(1, unit.end() if unit else 1)]
            raise UsageError(f"bad {label}: unknown unit {bad!r} {hint}")
        total += _decimal_ns(m.group(1), _DURATION_UNITS_NS[m.group(2)])
        pos = m.end()
    return total


def _decimal_ns(number: str, unit_ns: int) -> int:
    whole, _, frac = number.partition(".")
    value = int(whole or 0) * unit_ns
    if frac:
        value += int(frac) * unit_ns // 10 ** len(frac)
    return value


def parse_duration(text: str) -> float:
    """A duration in seconds (``'90s'`` -> 90.0, ``'45'`` -> 45.0, ``'7d'`` -> 604800.0)."""
    return parse_duration_ns(text) / NS


def duration_arg(text: str) -> float:
    """argparse ``type=`` for a duration in seconds (errors become usage errors)."""
    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- formatting ------------------------------------------------------------------------


def format_raw(ts_ns: int, nanosecond: bool = False) -> str:
    """``sssssssss.uuuuuu`` (tcpslice -R), or nine digits with ``nanosecond``."""
    sec, rem = divmod(ts_ns, NS)
    return f"{sec}.{rem:09d}" if nanosecond else f"{sec}.{rem // 1000:06d}"


def format_readable(ts_ns: int) -> str:
    """Local time as tcpslice -r prints it (``Thu Mar  7 21:42:06 2013``)."""
    return time.strftime("%a %b %e %T %Y", time.localtime(ts_ns // NS))


def format_parseable(ts_ns: int) -> str:
    """Local time in the ymdhmsu form (tcpslice -t), which parse_timespec reads back."""
    sec, rem = divmod(ts_ns, NS)
    lt = time.localtime(sec)
    return (
        f"{lt.tm_year:04d}y{lt.tm_mon:02d}m{lt.tm_mday:02d}d{lt.tm_hour:02d}h"
        f"{lt.tm_min:02d}m{lt.tm_sec:02d}s{rem // 1000:06d}u"
    )


def format_iso(ts_ns: int) -> str:
    """UTC ISO 8601 with nanoseconds (``2013-03-07T21:42:06.869344000Z``)."""
    from datetime import UTC, datetime  # noqa: PLC0415 - 2 ms, not for raw times

    sec, rem = divmod(ts_ns, NS)
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rem:09d}Z"
