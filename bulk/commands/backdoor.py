"""``bulk backdoor``: services running on non-standard ports, found from payload."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bulk.analyzers import backdoor_run
from bulk.analyzers.backdoor import BackdoorConfig, Finding
from bulk.analyzers.standard_ports import StandardPorts
from bulk.archive.listing import expand_inputs, traces_in_dir
from bulk.archive.members import Members
from bulk.commands.inputs import packet_window
from bulk.errors import EXIT_OK, UsageError
from bulk.timespec import format_iso

NAME = "backdoor"
HELP = "find services (ssh, http, ftp, telnet, irc, ...) on non-standard ports, by payload"
DESCRIPTION = """\
Identify each TCP connection's service from its first payload bytes, never
from its port, and report those running on a port that is not standard for
that service: an SSH server on 80, a web server on 22, IRC on 8000, a root
shell on any port. Signatures: ssh, http (requests, responses, proxy form),
ftp, smtp, pop3, imap, irc, telnet (option negotiation and line statistics),
rlogin, rsh, tls, the '# ' root backdoor, BitTorrent, Gnutella, KaZaA,
eDonkey; connections no signature knows are tested for interactive typing
(Zhang and Paxson's keystroke statistics) and reported as 'interactive'.

Client and server come from the payload (whoever sends 'HTTP/1.1 200' is the
server), so connections seen without their handshake are handled. Standard
ports follow IANA (see 'bulk/data/standard_ports.conf'); change them with
--ports FILE or --standard SERVICE=PORT,...

Only the first packets of each connection are inspected; on plain pcap and
pcapng files, libpcap hands only those to Python (the fast path).

examples:
  bulk backdoor -r capture.pcap
  bulk backdoor --dir /srv/bulk/traces --json > backdoor.log
  bulk backdoor -r day.pcap.zst -f 'net 10.1.0.0/16' --start 13h --end +1h
  bulk backdoor -r capture.pcap --standard ssh=22,2222 --standard http=80,8080,8081
  bulk backdoor -r capture.pcap --all      # also what runs on its standard port
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "-r",
        dest="files",
        metavar="FILE",
        nargs="+",
        action="extend",
        help="trace files (pcap, pcapng, .gz, .zst; '-' for stdin); repeatable",
    )
    src.add_argument("--dir", metavar="DIR", help="every trace of an archive directory")
    parser.add_argument("-f", dest="bpf", metavar="BPF", help="BPF filter (tcpdump syntax)")
    parser.add_argument("--start", metavar="T", help="window start (time spec, see bulk slice)")
    parser.add_argument("--end", metavar="T", help="window end (time spec)")
    parser.add_argument("--json", action="store_true", help="JSON lines, Zeek-like fields")
    parser.add_argument(
        "--ports",
        metavar="FILE",
        help="standard ports file (replaces the defaults of the services it lists)",
    )
    parser.add_argument(
        "--standard",
        metavar="SERVICE=PORT,...",
        action="append",
        default=[],
        help="standard ports of one service (replaces its defaults); repeatable",
    )
    parser.add_argument(
        "--all", action="store_true", help="also list services on their standard ports"
    )
    parser.add_argument(
        "--no-interactive",
        action="store_true",
        help="do not report the generic 'interactive' detections",
    )
    parser.add_argument(
        "--no-fast",
        action="store_true",
        help="read every packet in Python (for overlapping captures given together)",
    )
    parser.add_argument("--stats", action="store_true", help="print counters to stderr")


def _inputs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Every input path, and those found by listing an archive (which may move)."""
    if args.dir is not None:
        paths = traces_in_dir(args.dir)
        if not paths:
            raise UsageError(f"{args.dir}: no trace files")
        return paths, paths
    paths = expand_inputs(args.files)
    return paths, [p for p in paths if p not in args.files]  # from a directory given with -r


def _table_row(f: Finding) -> list[str]:
    return [
        format_iso(f.ts_ns)[:23] + "Z",
        f.uid,
        f"{f.client.host}:{f.client.port}",
        f"{f.server.host}:{f.server.port}",
        f.service,
        "yes" if f.standard else "no",
        f"{f.confidence:.2f}",
        f.evidence,
    ]


def _print_table(findings: list[Finding]) -> None:
    header = ["time", "uid", "client", "server", "service", "std", "conf", "evidence"]
    rows = [header] + [_table_row(f) for f in sorted(findings, key=lambda f: f.ts_ns)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    out = sys.stdout
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        out.write("  ".join([*cells, r[-1]]) + "\n")


def _warn(message: str) -> None:
    sys.stderr.write(f"bulk backdoor: warning: {message}\n")


def run(args: argparse.Namespace) -> int:
    paths, listed = _inputs(args)
    # An archive changes under its readers: a listed trace that moved since is
    # followed, one deleted (retention) is a warning and skipped.
    opener = Members(listed, _warn).open
    standard = StandardPorts.load(args.ports, args.standard)
    cfg = BackdoorConfig(
        standard=standard,
        report_standard=args.all,
        report_interactive=not args.no_interactive,
    )
    start_ns, end_ns = packet_window(args.start, args.end, paths, opener)
    findings: list[Finding] = []
    emit: Callable[[Finding], None] = findings.append
    if args.json:

        def emit(f: Finding) -> None:
            sys.stdout.write(f.json_line())

    fast = False if args.no_fast else None
    try:
        stats = backdoor_run.run(
            paths, cfg, emit, start_ns=start_ns, end_ns=end_ns, bpf=args.bpf, fast=fast,
            opener=opener,
        )  # fmt: skip
    finally:
        if not args.json and findings:
            _print_table(findings)
        sys.stdout.flush()
    if not args.json and not findings:
        sys.stderr.write("bulk backdoor: no services on non-standard ports found\n")
    if args.stats:
        sys.stderr.write(
            f"bulk backdoor: {stats.path} path{f' (gate {stats.gate})' if stats.gate else ''}, "
            f"{stats.files} files, "
            f"{stats.packets_to_python} packets read in Python, {stats.flows} TCP connections, "
            f"{stats.decided_early} decided early\n"
        )
    return EXIT_OK
