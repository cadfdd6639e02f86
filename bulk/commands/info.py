"""``bulk info``: what a trace, a set of traces or a whole archive holds."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bulk.archive.listing import expand_inputs
from bulk.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRUNCATED, TraceError, UsageError
from bulk.summary import TraceSummary, iso_ns, summarize
from bulk.trace import linktype_name

NAME = "info"
HELP = "summarise traces: format, link type, packets, bytes, times, rates (capinfos-like)"
DESCRIPTION = """\
Summarise one or more traces, or every trace under a directory (the archive).
Reads pcap (any byte order, micro- or nanosecond), pcapng, and either
compressed with gzip or zstd; '-' reads standard input.

For each file: format, link type(s), packets, bytes, first and last packet
time, duration, average packet and byte rates, and whether the file is
truncated. With several files, a total follows.

examples:
  bulk info capture.pcap
  bulk info /srv/bulk/traces            # the whole archive, with a total
  zstdcat old.pcap.zst | bulk info -    # from a pipe
  bulk info --json *.pcap | jq '.total.packets'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="FILE|DIR", help="traces or directories")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _total(summaries: list[TraceSummary]) -> dict[str, Any]:
    firsts = [s.min_ns for s in summaries if s.min_ns is not None]
    lasts = [s.max_ns for s in summaries if s.max_ns is not None]
    first = min(firsts) if firsts else None
    last = max(lasts) if lasts else None
    packets = sum(s.packets for s in summaries)
    cap = sum(s.captured_bytes for s in summaries)
    secs = (last - first) / 1e9 if first is not None and last is not None else 0.0
    return {
        "files": len(summaries),
        "packets": packets,
        "captured_bytes": cap,
        "wire_bytes": sum(s.wire_bytes for s in summaries),
        "first_ns": first,
        "last_ns": last,
        "first_time": iso_ns(first),
        "last_time": iso_ns(last),
        "duration_s": secs,
        "packets_per_s": packets / secs if secs > 0 else None,
        "bytes_per_s": cap / secs if secs > 0 else None,
        "truncated_files": sum(1 for s in summaries if s.truncated),
        "unreadable_files": sum(1 for s in summaries if s.error and not s.truncated),
    }


def _rate(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:,.1f} {unit}"


def _print_summary(s: TraceSummary) -> None:
    j = s.to_json()
    fmt = s.format
    if s.format == "pcap":
        fmt += ", nanosecond" if s.nanosecond else ", microsecond"
    if s.compression:
        fmt += f", {s.compression}-compressed"
    links = ", ".join(f"{linktype_name(lt)} ({lt})" for lt in s.linktypes) or "none"
    print(f"{s.path}")
    print(f"  format:          {fmt}")
    print(f"  link type:       {links}")
    print(f"  packets:         {s.packets:,}")
    print(f"  bytes:           {s.captured_bytes:,} captured, {s.wire_bytes:,} on the wire")
    print(f"  first packet:    {j['first_time'] or 'n/a'}")
    print(f"  last packet:     {j['last_time'] or 'n/a'}")
    print(f"  duration:        {j['duration_s']:.6f} s")
    print(
        f"  average rate:    {_rate(j['packets_per_s'], 'packets/s')}, "
        f"{_rate(j['bytes_per_s'], 'bytes/s')}"
    )
    if not s.time_ordered:
        print("  time order:      NOT time-ordered (first/last are earliest/latest)")
    if s.error:
        state = "TRUNCATED" if s.truncated else "CORRUPT"
        print(f"  state:           {state}: {s.error}")


def run(args: argparse.Namespace) -> int:
    paths = expand_inputs(args.inputs)
    if not paths:
        raise UsageError("no trace files found in " + ", ".join(args.inputs))
    summaries: list[TraceSummary] = []
    failed: list[TraceError] = []
    for path in paths:
        try:
            summaries.append(summarize(path))
        except TraceError as exc:
            failed.append(exc)
            if not args.json:
                sys.stderr.write(f"bulk info: {exc}\n")
    if args.json:
        doc = {
            "files": [s.to_json() for s in summaries],
            "errors": [{"path": e.path, "offset": e.offset, "error": e.reason} for e in failed],
            "total": _total(summaries),
        }
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for s in summaries:
            _print_summary(s)
        if len(summaries) > 1:
            t = _total(summaries)
            print(
                f"total: {t['files']} files, {t['packets']:,} packets, "
                f"{t['captured_bytes']:,} bytes, {t['first_time']} .. {t['last_time']}"
            )
    for s in summaries:
        if s.error:
            kind = "truncated" if s.truncated else "corrupt"
            sys.stderr.write(f"bulk info: warning: {s.path} is {kind}: {s.error}\n")
    if failed or any(s.error and not s.truncated for s in summaries):
        return EXIT_BAD_INPUT
    if any(s.truncated for s in summaries):
        return EXIT_TRUNCATED
    return EXIT_OK
