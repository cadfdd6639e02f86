"""``bulk status``: is capture running, how fast, any drops, how full is the archive."""

from __future__ import annotations

import argparse
import json
import os
import sys

from bulk.capture.status import collect, to_json, to_prometheus, to_text, write_textfile
from bulk.config import load_config
from bulk.errors import EXIT_FAILURE, EXIT_OK, UsageError

NAME = "status"
HELP = "is capture running: pid, uptime, rates, drops, current file, archive size, free disk"
DESCRIPTION = """\
Report every capture of an archive directory and the archive itself:

  capture: running or not, pid, uptime, workers, packets/s and bytes/s now,
           packets, bytes and kernel drops since it started, current file(s),
           last rotation
  archive: trace files and their size, free disk, oldest and newest trace,
           and the last closed files with their packets and kernel drops

Nothing is asked of the capture process: its workers rewrite a small state
file (DIR/.bulk/capture-IFACE.wK.json) every 2 seconds, its pid file is
checked with psutil, and per-file figures come from the catalogue.

--prometheus FILE also writes the figures in the Prometheus text format,
atomically, for node_exporter's textfile collector (run it from cron, or a
systemd timer, every minute).

Exit status: 0 when every capture found is running, 1 when one is not or
none is known.

examples:
  bulk status
  bulk status -i eth1 --dir /srv/bulk/traces --json | jq .captures[0].drops
  bulk status --prometheus /var/lib/prometheus/node-exporter/bulk.prom
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--interface", help="only this interface's capture")
    parser.add_argument(
        "--dir", help="archive directory (default: 'dir' in bulk.toml, else /srv/bulk/traces)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--prometheus",
        metavar="FILE",
        help="also write the metrics to FILE in the Prometheus text format ('-': print them)",
    )


def run(args: argparse.Namespace) -> int:
    directory = load_config().archive_dir(args.dir)
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: no such archive directory")
    status = collect(directory, args.interface)
    if args.prometheus == "-":
        sys.stdout.write(to_prometheus(status))
    else:
        if args.prometheus:
            try:
                write_textfile(args.prometheus, to_prometheus(status))
            except OSError as exc:
                raise UsageError(f"{args.prometheus}: cannot write: {exc.strerror}") from None
        if args.json:
            json.dump(to_json(status), sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(to_text(status))
    return EXIT_OK if status.running else EXIT_FAILURE
