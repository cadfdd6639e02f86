"""``bulk capture``: capture every packet of an interface into a rotating archive."""

from __future__ import annotations

import argparse
import logging
import sys

from bulk.capture.options import resolve_options
from bulk.capture.supervisor import run_capture
from bulk.config import load_config

NAME = "capture"
HELP = "capture every packet of an interface into rotating pcap files (long-running)"
DESCRIPTION = """\
Capture every packet seen on an interface into an archive directory of pcap
files, rotated by time, by size and on SIGHUP. This is the sensor's long-running
process (the classic spot-trace); on a sensor systemd runs it as
bulk-capture@IFACE.service, and 'bulk rotate' from cron makes it switch files.

Files are named by the UTC time they were opened, the interface and a
sequence number that continues across restarts, e.g.
  bulk-20260127T131500Z-eth0-000042.pcap
The file being written ends in '.pcap.open'; it becomes final by an atomic
rename after flush and fsync. A catalogue (DIR/.bulk/catalogue.sqlite) records
each file's interface, times, packets, bytes, kernel drops and a sparse time
index; live figures for 'bulk status' are in DIR/.bulk/capture-IFACE.w0.json.
A file left open by a crash is cut to its last whole packet and finalised
when the capture starts again.

Signals: SIGHUP rotates now; SIGTERM or SIGINT drain the kernel buffer, close
and finalise the open file, then exit. Every closed file is logged with its
packets, bytes and kernel drops.

Defaults come from /etc/bulk/bulk.toml when present (top-level 'dir', and
[capture] keys named like the options: interface, rotate_seconds,
rotate_bytes, align, snaplen, buffer, filter, workers, promisc, index, engine); the command
line wins. BULK_CONFIG=FILE reads another file.

examples:
  bulk capture -i eth1 --dir /srv/bulk/traces --rotate-seconds 1h --align
  bulk capture -i eth1 --dir /tmp/t --rotate-bytes 100M --filter 'not port 22'
  bulk capture -i eth1 --workers 2          # two processes in one PACKET_FANOUT group
  kill -HUP $(head -1 /srv/bulk/traces/.bulk/capture-eth1.pid)   # rotate now
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--interface", help="interface to capture on ('any' for all)")
    parser.add_argument(
        "--dir",
        help="archive directory (default: 'dir' in bulk.toml, "
        "else /srv/bulk/traces); created if missing",
    )
    parser.add_argument(
        "--rotate-seconds",
        metavar="DURATION",
        help="start a new file every DURATION (3600, 90s, 30m, 1h, 1d)",
    )
    parser.add_argument(
        "--align",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rotate on multiples of DURATION since 00:00 UTC (e.g. on the hour)",
    )
    parser.add_argument(
        "--rotate-bytes",
        metavar="SIZE",
        help="start a new file when the open one reaches SIZE (100M, 1G; K/M/G are 1024-based)",
    )
    parser.add_argument("--snaplen", type=int, help="bytes kept per packet (default 262144: all)")
    parser.add_argument(
        "--buffer", metavar="SIZE", help="kernel ring buffer per worker (default 32M)"
    )
    parser.add_argument(
        "--filter",
        metavar="BPF",
        help="capture only what this BPF expression matches (tcpdump syntax, run in the kernel)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N capture processes sharing the interface in one PACKET_FANOUT group (default 1)",
    )
    parser.add_argument(
        "--promisc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="promiscuous mode (default on)",
    )
    parser.add_argument(
        "--index",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="index each closed file: its time range and time index (the libpcap engine "
        "builds them while writing, pcapy scans the file) and its host index (default on; with "
        "--no-index the catalogue gets only what the capture knows, 'bulk index' adds the rest)",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "libpcap", "pcapy"),
        default=None,
        help="libpcap: the system libpcap (libpcap.so.0.8) writes packets in C, as tcpdump -w; "
        "pcapy: pcapy-ng; auto (default): libpcap when it loads, else pcapy",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")


def setup_logging(quiet: bool) -> None:
    """Log lines to stderr (journald or the capture log file keeps them)."""
    logger = logging.getLogger("bulk")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s bulk capture[%(process)d]: %(message)s", "%Y-%m-%dT%H:%M:%S%z"
            )
        )
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def run(args: argparse.Namespace) -> int:
    opts = resolve_options(
        {
            "interface": args.interface,
            "dir": args.dir,
            "rotate_seconds": args.rotate_seconds,
            "rotate_bytes": args.rotate_bytes,
            "align": args.align,
            "snaplen": args.snaplen,
            "buffer": args.buffer,
            "filter": args.filter,
            "workers": args.workers,
            "promisc": args.promisc,
            "index": args.index,
            "engine": args.engine,
        },
        load_config(),
    )
    setup_logging(args.quiet)
    return run_capture(opts)
