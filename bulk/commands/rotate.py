"""``bulk rotate``: switch the running capture to a new file, or start it (cron job)."""

from __future__ import annotations

import argparse

from bulk.archive.pidfile import captures_in
from bulk.capture.control import rotate_or_start
from bulk.capture.options import SECTION
from bulk.config import load_config
from bulk.errors import EXIT_OK, UsageError

NAME = "rotate"
HELP = "make the running capture start a new file, or start the capture if none runs"
DESCRIPTION = """\
What the classic start-capture-all cron job did: find the running capture of
an interface, make it close its file and continue in a new one (the sequence
number goes on), and start the capture when none is running. Safe to run from
cron every hour: two runs at once cannot start two captures (the pid file is
locked), and a stale pid file, or a pid since reused by another program, is
never trusted (checked with psutil).

The interface is -i, else [capture] interface in bulk.toml, else every
capture that has a pid file in the archive. A capture started here runs in
the background, takes its options from bulk.toml, and logs to
DIR/.bulk/capture-IFACE.log. The command waits until the switch (or the
start) is confirmed by the capture's live state and prints what it did.

examples:
  bulk rotate -i eth1 --dir /srv/bulk/traces
  # /etc/cron.d/bulk:   0 * * * *  bulk  /opt/bulk/bin/bulk rotate -i eth1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--interface", help="the capture's interface")
    parser.add_argument(
        "--dir", help="archive directory (default: 'dir' in bulk.toml, else /srv/bulk/traces)"
    )


def run(args: argparse.Namespace) -> int:
    config = load_config()
    directory = config.archive_dir(args.dir)
    interface = config.pick(args.interface, SECTION, "interface")
    targets = [str(interface)] if interface else captures_in(directory)
    if not targets:
        raise UsageError(
            f"no capture known in {directory} and no interface to start one on "
            "(give -i IFACE or set [capture] interface in bulk.toml)"
        )
    for target in targets:
        print(rotate_or_start(directory, target))
    return EXIT_OK
