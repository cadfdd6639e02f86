"""Disk budgets and the retention plan (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulk.compress.budget import Budget, parse_budget
from bulk.compress.retention import DAY_NS, DiskUsage, RetentionPolicy, TraceFile, plan
from bulk.errors import UsageError


def test_parse_budget() -> None:
    assert parse_budget("80%") == Budget(percent=80.0)
    assert parse_budget("12.5%") == Budget(percent=12.5)
    assert parse_budget("10G") == Budget(size=10 * 1024**3)
    assert parse_budget("500MiB") == Budget(size=500 * 1024**2)
    assert parse_budget("1TB") == Budget(size=10**12)
    for bad in ("0%", "101%", "x%", "-5G", "5Q", "", "0"):
        with pytest.raises(UsageError):
            parse_budget(bad)


def files(sizes: list[int]) -> list[TraceFile]:
    return [TraceFile(f"/a/t{i:03d}", s, i * DAY_NS, "modified") for i, s in enumerate(sizes)]


@given(
    st.lists(st.integers(min_value=1, max_value=10**6), max_size=30),
    st.integers(min_value=1, max_value=3 * 10**7),
    st.integers(min_value=0, max_value=10**6),
)
def test_size_budget_deletes_the_oldest_until_it_fits(
    sizes: list[int], limit: int, open_bytes: int
) -> None:
    fl = files(sizes)
    total = sum(sizes) + open_bytes
    out, warning = plan(fl, RetentionPolicy(budget=Budget(size=limit)), 0, DiskUsage(1, 0), total)
    deleted = [d.path for d in out]
    # A prefix of the files, oldest first...
    assert deleted == [f.path for f in fl[: len(deleted)]]
    remaining = total - sum(d.bytes for d in out)
    if warning is None:
        assert remaining <= limit
        # ...and no more than needed: keeping the last one deleted would be over.
        if out:
            assert remaining + out[-1].bytes > limit
    else:
        assert len(out) == len(fl) and remaining > limit


def test_percent_budget_uses_the_filesystem() -> None:
    fl = files([100, 100, 100, 100])
    usage = DiskUsage(total=1000, used=900)
    out, warning = plan(fl, RetentionPolicy(budget=Budget(percent=70)), 0, usage, 400)
    assert [d.path for d in out] == ["/a/t000", "/a/t001"]
    assert warning is None
    assert "filesystem 90.0% used" in out[0].reason


def test_keep_days_counts_toward_the_budget() -> None:
    fl = files([100, 100, 100, 100])  # ages 10, 9, 8, 7 days at now=10 days
    now = 10 * DAY_NS
    out, _w = plan(
        fl, RetentionPolicy(keep_days=8.5, budget=Budget(size=150)), now, DiskUsage(1, 0), 400
    )
    assert [(d.path, d.reason.split()[0]) for d in out] == [
        ("/a/t000", "older"),
        ("/a/t001", "older"),
        ("/a/t002", "--max-disk"),
    ]
