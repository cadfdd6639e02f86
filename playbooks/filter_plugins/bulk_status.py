"""Filter for playbooks/status.yml: one table from every sensor's ``bulk status --json``."""

from __future__ import annotations

import json
from typing import Any

COLUMNS = (
    "sensor",
    "interface",
    "capture",
    "uptime",
    "pkt/s",
    "Mbit/s",
    "drops",
    "files",
    "archive",
    "disk",
    "oldest",
    "newest",
)


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    return (f"{days}d" if days else "") + f"{s // 3600:02d}h{s % 3600 // 60:02d}m"


def _rows(host: str, result: dict[str, Any] | None) -> list[list[str]]:
    blank = ["-"] * (len(COLUMNS) - 3)
    if not result or result.get("unreachable"):
        return [[host, "-", "unreachable", *blank]]
    try:
        doc = json.loads(result.get("stdout") or "")
    except ValueError:
        err = (result.get("stderr") or result.get("msg") or "no output").strip().splitlines()
        return [[host, "-", "error: " + (err[-1] if err else "?")[:60], *blank]]
    archive = doc.get("archive") or {}
    fs, free = archive.get("fs_bytes") or 0, archive.get("free_bytes") or 0
    tail = [
        str(archive.get("files", "-")),
        _size(archive.get("bytes")),
        f"{100 * (fs - free) / fs:.0f}%" if fs else "-",
        str(archive.get("oldest_time") or "-"),
        str(archive.get("newest_time") or "-"),
    ]
    captures = doc.get("captures") or []
    if not captures:
        return [[host, "-", "none known", "-", "-", "-", "-", *tail]]
    rows = []
    for c in captures:
        state = "running" if c.get("running") else "STOPPED"
        if c.get("state_stale"):
            state = "STALLED"
        rows.append(
            [
                host,
                str(c.get("interface", "-")),
                state,
                _duration(c.get("uptime_s")),
                f"{c.get('pps', 0):.0f}",
                f"{8 * c.get('bps', 0) / 1e6:.1f}",
                str(c.get("drops", 0) + c.get("ifdrops", 0)),
                *tail,
            ]
        )
    return rows


def bulk_status_table(hosts: list[str], results: dict[str, Any]) -> list[str]:
    """Aligned table lines: a header, then one line per capture of each host.

    ``results`` maps a host to its registered ``bulk status --json`` result
    (missing for a host that could not be reached).
    """
    rows = [list(COLUMNS)]
    for host in sorted(hosts):
        rows.extend(_rows(host, results.get(host)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self) -> dict[str, Any]:
        return {"bulk_status_table": bulk_status_table}
