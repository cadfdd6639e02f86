"""``bulk contents``: write each TCP connection's bytes to files, both directions."""

from __future__ import annotations

import argparse
import sys

from bulk.analyzers.contents import SUMMARY_NAME, ContentsAnalyzer
from bulk.archive.listing import expand_inputs, traces_in_dir
from bulk.archive.members import Members
from bulk.commands.inputs import packet_window
from bulk.decode import PROTO_TCP
from bulk.errors import EXIT_OK, TraceError, UsageError, Vanished
from bulk.flow.table import FlowConfig, FlowTable
from bulk.timespec import duration_arg
from bulk.trace import BpfFilter, open_trace
from bulk.trace.source import Opener, open_direct

NAME = "contents"
HELP = "write each TCP connection's reassembled bytes to contents.H1.P1.H2.P2 files"
DESCRIPTION = """\
Reassemble every TCP connection in the input and write what each side sent
to its own file in OUTDIR (the modern 'bro -r trace contents'):

  contents.H1.P1.H2.P2   bytes the originator H1:P1 sent to the responder H2:P2
  contents.H2.P2.H1.P1   bytes the responder sent back

plus OUTDIR/contents.jsonl: one JSON line per connection (endpoints, start,
end, bytes and gaps each way, file names). Bytes that were never captured
are written as a visible marker '<<gap N>>' and counted. IPv6 addresses use
'-' for ':' in names. A 4-tuple reused by a later connection gets the
suffix .c2, .c3, ... OUTDIR must not already hold contents output.

Retransmissions, overlaps (first copy wins), out-of-order segments,
sequence wraparound and connections whose start was not captured are
handled; see docs/commands/contents.md.

examples:
  bulk contents -r trace.pcap -o out/
  bulk contents -r trace.pcap -f 'host 10.1.2.3 and port 80' -o out/
  bulk contents --dir /srv/bulk/traces --start 2024-05-01T13:15 --end +5m -o case42/
  jq -r 'select(.orig_gaps + .resp_gaps == 0) | .resp_file' out/contents.jsonl
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("input (at least one)")
    src.add_argument(
        "-r",
        dest="files",
        metavar="FILE",
        nargs="+",
        action="extend",
        default=[],
        help="trace file(s): pcap, pcapng, .gz/.zst, '-' for stdin; repeatable",
    )
    src.add_argument(
        "--dir",
        dest="dirs",
        metavar="DIR",
        action="append",
        default=[],
        help="every trace under DIR (an archive), merged in time order",
    )
    parser.add_argument("-f", dest="bpf", metavar="BPF", help="BPF filter (tcpdump syntax)")
    parser.add_argument("--start", metavar="T", help="first packet time (see docs/timespec.md)")
    parser.add_argument(
        "--end", metavar="T", help="last packet time (inclusive; +N is after start)"
    )
    parser.add_argument(
        "-o",
        dest="outdir",
        metavar="OUTDIR",
        default=".",
        help="output directory, created if missing (default: current directory)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=duration_arg,
        default=3600.0,
        metavar="DUR",
        help="end a connection after this much packet time without a packet (default 1h)",
    )
    parser.add_argument(
        "--max-flows",
        type=int,
        default=65_536,
        metavar="N",
        help="connections tracked at once; the least recently used is ended first",
    )
    parser.add_argument(
        "--max-open-files",
        type=int,
        default=128,
        metavar="N",
        help="output files open at once (least recently used closed first)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no totals on stderr")


def _inputs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Every input path, and those found by listing an archive (which may move)."""
    paths = expand_inputs(args.files)
    listed = [p for p in paths if p not in args.files]  # from a directory given with -r
    for d in args.dirs:
        found = traces_in_dir(d)
        if not found:
            raise UsageError(f"no trace files under {d}")
        paths.extend(found)
        listed.extend(found)
    if not paths:
        raise UsageError("no input: give -r FILE or --dir DIR")
    if paths.count("-") > 1:
        raise UsageError("standard input ('-') can be read only once")
    return paths, listed


def check_inputs(paths: list[str], bpf: str | None, opener: Opener = open_direct) -> None:
    """Raise the error a bad input or filter would give, before any output exists."""
    flt = BpfFilter(bpf) if bpf else None
    for path in paths:
        if path == "-":
            continue
        try:
            reader = opener(path, open_trace)
        except Vanished:
            continue
        with reader:
            if flt is not None and reader.linktype >= 0:
                flt.program(reader.linktype)


def _warn(message: str) -> None:
    sys.stderr.write(f"bulk contents: warning: {message}\n")


def run(args: argparse.Namespace) -> int:
    paths, listed = _inputs(args)
    if args.max_flows < 1 or args.max_open_files < 2:
        raise UsageError("--max-flows must be >= 1 and --max-open-files >= 2")
    # An archive changes under its readers: a listed trace that moved since is
    # followed, one deleted (retention) is a warning and skipped.
    opener = Members(listed, _warn).open
    start_ns, end_ns = packet_window(args.start, args.end, paths, opener)
    # Unreadable inputs and bad filters fail here, before any output is created.
    check_inputs(paths, args.bpf, opener)
    analyzer = ContentsAnalyzer(args.outdir, max_open_files=args.max_open_files)
    table = FlowTable(
        [analyzer],
        FlowConfig(
            idle_timeout_s=args.idle_timeout,
            max_flows=args.max_flows,
            protocols=frozenset((PROTO_TCP,)),
        ),
    )
    try:
        table.run_traces(paths, start_ns, end_ns, args.bpf, opener)
    except TraceError:
        table.finish()  # write everything read before the damage, then report it
        raise
    finally:
        analyzer.close()
        if not args.quiet:
            s = table.stats
            sys.stderr.write(
                f"bulk contents: {s.packets} packets, {analyzer.connections} connections, "
                f"{analyzer.files} files, {analyzer.bytes_written} bytes, {analyzer.gaps} gaps "
                f"-> {args.outdir}/{SUMMARY_NAME}\n"
            )
    return EXIT_OK
