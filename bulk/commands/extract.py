"""``bulk extract``: the packets matching a BPF filter, from traces or the archive."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import BinaryIO

from bulk.commands.inputs import gather_inputs
from bulk.errors import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_TRUNCATED,
    TruncatedTrace,
    UsageError,
    Vanished,
)

NAME = "extract"
HELP = "write the packets matching a tcpdump filter, from traces or the whole archive"
DESCRIPTION = """\
Write every packet that matches a BPF filter expression (tcpdump's syntax and
semantics: libpcap compiles and runs it, in C) from one or more traces, or
from a whole archive directory, merged in time order, as one pcap to -w FILE
or to standard output (never a terminal). It is the classic

    tcpdump -r bulk.trace -w good.trace 'host w.x.y.z'

over any number of files, compressed or not, restricted to a time window.
Output is byte for byte what 'tcpdump -r FILE -w OUT FILTER' writes for a
microsecond trace; a nanosecond trace gives nanosecond output (as tcpdump
--time-stamp-precision=nano).

Traces with a host index (FILE.idx, written when capture closes a trace) are
skipped without being read when the filter needs a host, net, port or
protocol they do not hold, or when they hold nothing in the time window;
--no-index reads everything. Skipping never changes the output.

The window (--start, --end, both inclusive) takes the times of 'bulk slice'
(see docs/timespec.md): epoch seconds, ISO 8601, '10m ago', 13h15m, +5m, ...

A trace cut short (a crash, a copy in progress) gives every packet before
the cut; the run ends with exit status 3 and one line naming the file.

examples:
  bulk extract -r bulk.pcap -w good.pcap 'host 10.1.2.3'
  bulk extract --dir /srv/bulk/traces --start '2h ago' 'host 10.1.2.3 and port 22' \\
      | tcpdump -nr -
  bulk extract --dir /srv/bulk/traces --start 2026-11-27T13:00Z --end +15m \\
      -w incident.pcap 'net 192.0.2.0/24 or host 2001:db8::7'
  bulk extract -r a.pcap.zst -r b.pcap -w out.pcap 'tcp[13] & 2 != 0'
  bulk slice 13h15m +5m big.pcap | bulk extract -r - -w out.pcap 'udp port 53'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "expression",
        nargs="*",
        metavar="EXPRESSION",
        help="BPF filter, tcpdump syntax (several words are joined; none: every packet)",
    )
    parser.add_argument(
        "-r",
        "--read",
        action="append",
        default=[],
        metavar="FILE",
        help="a trace (pcap, pcapng, .gz/.zst; '-' is stdin); repeatable",
    )
    parser.add_argument(
        "--dir",
        action="append",
        default=[],
        metavar="DIR",
        help="an archive directory: every trace in it (repeatable)",
    )
    parser.add_argument(
        "--closed-only",
        action="store_true",
        help="with --dir, leave out the trace still being captured (*.open)",
    )
    parser.add_argument("--start", metavar="TIME", help="first packet time to keep (inclusive)")
    parser.add_argument("--end", metavar="TIME", help="last packet time to keep (inclusive)")
    parser.add_argument("-w", "--write", metavar="FILE", help="write to FILE ('-': stdout)")
    parser.add_argument(
        "-F", "--filter-file", metavar="FILE", help="read the expression from FILE (as tcpdump -F)"
    )
    parser.add_argument(
        "--no-index", action="store_true", help="read every trace, ignore host indexes"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say on stderr what the index skipped and what was read",
    )


def _expression(args: argparse.Namespace) -> str:
    if args.filter_file:
        if args.expression:
            raise UsageError("give the expression either with -F or on the command line")
        try:
            with open(args.filter_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError(f"{args.filter_file}: {exc.strerror or exc}") from None
        # tcpdump -F: '#' starts a comment to the end of the line.
        return " ".join(line.split("#", 1)[0] for line in text.splitlines()).strip()
    return " ".join(args.expression).strip()


def _open_output(target: str | None) -> tuple[BinaryIO, bool]:
    if target is None or target == "-":
        if sys.stdout.isatty():
            raise UsageError(
                "refusing to write pcap to a terminal: use -w FILE, or pipe into a program"
            )
        return open(sys.stdout.fileno(), "wb", buffering=1 << 20, closefd=False), False
    try:
        return open(target, "wb", buffering=1 << 20), True
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None


def warn(message: str) -> None:
    sys.stderr.write(f"bulk extract: warning: {message}\n")


def run(args: argparse.Namespace) -> int:
    from bulk.archive.listing import OPEN_SUFFIX  # noqa: PLC0415
    from bulk.archive.members import Members  # noqa: PLC0415
    from bulk.extraction import describe, make_plan, write_plan  # noqa: PLC0415
    from bulk.extraction.sources import check_filter  # noqa: PLC0415
    from bulk.timespec import TimeWindow, needs_reference, parse_timespec  # noqa: PLC0415

    expression = _expression(args)
    paths, listed = gather_inputs(
        args.read, args.dir, include_open=not args.closed_only, how="give -r FILE or --dir DIR"
    )
    use_index = not args.no_index
    # An archive changes under its readers: a listed trace that moved is followed,
    # one deleted is a warning. Those named with -r must be there.
    members = Members(listed, warn)
    inputs = []
    for p in paths:
        try:
            inputs.append(members.open(p, partial(describe, use_index=use_index)))
        except Vanished:
            continue
    paths = [i.path for i in inputs]
    # A bad filter fails before any output, with libpcap's message.
    linktypes = {lt for i in inputs for lt in i.linktypes} or {1}
    if expression:
        for lt in sorted(linktypes):
            check_filter(expression, lt)
    first_ns = min((i.order_ns for i in inputs if i.order_ns is not None), default=None)
    for spec in (args.start, args.end):
        if spec is not None and needs_reference(spec) and first_ns is None:
            raise UsageError(f"time {spec!r} is relative to the first packet, and there is none")
    start_ns = parse_timespec(args.start, first_ns) if args.start is not None else None
    end_ns = (
        parse_timespec(args.end, first_ns, is_end=True, start_ns=start_ns)
        if args.end is not None
        else None
    )
    window = TimeWindow(start_ns, end_ns)
    plan = make_plan(paths, expression, window, use_index=not args.no_index, inputs=inputs)
    if args.verbose:
        sys.stderr.write(
            f"bulk extract: {len(plan.inputs)} traces, {len(plan.to_read)} to read, "
            f"{plan.skipped_by_index} skipped by the host index, {plan.skipped_by_time} "
            f"outside the window; the filter requires "
            f"{plan.requirement.describe() if plan.requirement else '(no index found)'}\n"
        )
    out, owned = _open_output(args.write)
    try:
        target = "standard output" if args.write in (None, "-") else args.write
        report = write_plan(plan, expression, window, out, target=target)
    finally:
        if owned:
            out.close()
    status = EXIT_OK
    for err in report.errors:
        if isinstance(err, Vanished):
            warn(str(err))
            continue
        truncated = isinstance(err, TruncatedTrace)
        if truncated and err.path.endswith(OPEN_SUFFIX):
            continue  # the trace being captured ends mid-record: expected
        sys.stderr.write(f"bulk extract: {err}\n")
        if not truncated:
            status = EXIT_BAD_INPUT
        elif status == EXIT_OK:
            status = EXIT_TRUNCATED
    if args.verbose:
        methods = ", ".join(f"{k} {v}" for k, v in sorted(report.methods.items()))
        written = (
            "packets written by libpcap's dumper"
            if report.packets < 0
            else f"{report.packets} packets, {report.bytes} bytes written"
        )
        sys.stderr.write(
            f"bulk extract: {written}{' (read: ' + methods + ')' if methods else ''}\n"
        )
    return status
