"""``bulk index``: (re)build the archive catalogue and the time index of traces."""

from __future__ import annotations

import argparse
import os
import sys

from bulk.archive.catalogue import Catalogue
from bulk.archive.listing import traces_in_dir
from bulk.archive.scan import TraceScan
from bulk.config import load_config
from bulk.errors import EXIT_BAD_INPUT, EXIT_OK, TraceError, UsageError
from bulk.summary import iso_ns

NAME = "index"
HELP = "rebuild the archive catalogue, or index given traces into it"
DESCRIPTION = """\
The catalogue (DIR/.bulk/catalogue.sqlite) lists every trace of an archive
with its interface, sequence number, state (open, closed, compressed), first
and last packet time, packets, bytes, kernel drops, and a sparse time index
(the byte offset of a record about every MiB) that 'bulk slice' uses to seek.
'bulk capture' keeps it up to date; nothing needs it to read a trace.

--rebuild re-scans every trace under the directory and makes the catalogue
match the files: rows of missing files are dropped, every file is scanned
again (compressed ones are decompressed on the fly), and what only the
capture knew (kernel drops, open and close times) is kept for files whose
size did not change. Run it after restoring or copying an archive, or when
the catalogue was lost; it is safe while a capture runs.

With FILE arguments, only those files are scanned and recorded (added when
new), in the catalogue of their directory (or of --dir).

Both also write each closed trace's host index (X.pcap.idx: its addresses,
ports and protocols), which lets 'bulk extract' skip traces that cannot match
a filter; an up-to-date one is kept.

examples:
  bulk index --rebuild --dir /srv/bulk/traces
  bulk index /srv/bulk/traces/bulk-20260127T131500Z-eth0-000042.pcap
  bulk index --dir /data/case17 /data/case17/*.pcap
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE", help="traces to (re)index")
    parser.add_argument("--rebuild", action="store_true", help="re-scan the whole archive")
    parser.add_argument(
        "--dir",
        help="archive directory (default: 'dir' in bulk.toml, "
        "else /srv/bulk/traces; with FILEs: each file's directory)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")


def _line(name: str, scan: TraceScan) -> str:
    span = f"{iso_ns(scan.min_ns)} .. {iso_ns(scan.max_ns)}" if scan.packets else "no packets"
    entries = len(scan.entries)
    return f"{name}: {scan.packets} packets, {scan.bytes} bytes, {span}, {entries} index entries"


def run(args: argparse.Namespace) -> int:
    if args.rebuild == bool(args.files):
        raise UsageError("give --rebuild or FILE arguments (one of the two)")
    config = load_config()
    if args.rebuild:
        directory = config.archive_dir(args.dir)
        if not os.path.isdir(directory):
            raise UsageError(f"{directory}: not a directory")

        def progress(name: str, scan: TraceScan) -> None:
            if not args.quiet:
                print(_line(name, scan), flush=True)

        with Catalogue.open(directory) as cat:
            report = cat.rebuild(progress)
        for error in report.errors:
            sys.stderr.write(f"bulk index: {error}\n")
        if not args.quiet:
            print(
                f"catalogue {cat.path}: {report.files} files indexed "
                f"({report.index_entries} index entries), {report.open_files} open, "
                f"{report.removed} rows of missing files removed"
            )
        hosts_ok = _host_indexes(
            traces_in_dir(directory, include_open=False), args.quiet, report=not report.errors
        )
        return EXIT_BAD_INPUT if report.errors or not hosts_ok else EXIT_OK
    status = EXIT_OK
    by_dir: dict[str, list[str]] = {}
    for path in args.files:
        if not os.path.isfile(path):
            raise UsageError(f"{path}: no such file")
        directory = args.dir if args.dir is not None else os.path.dirname(path) or "."
        by_dir.setdefault(directory, []).append(path)
    for directory, paths in by_dir.items():
        with Catalogue.open(directory) as cat:
            for path in paths:
                try:
                    record, scan = cat.index_file(path)
                except TraceError as exc:
                    sys.stderr.write(f"bulk index: {exc}\n")
                    status = EXIT_BAD_INPUT
                    continue
                if scan.error:
                    sys.stderr.write(
                        f"bulk index: {path}: {scan.error} (indexed up to byte {scan.end_offset})\n"
                    )
                    status = EXIT_BAD_INPUT
                if not args.quiet:
                    print(_line(record.name, scan))
                # A damage already reported above is not reported twice.
                if not _host_indexes([path], quiet=True, report=not scan.error):
                    status = EXIT_BAD_INPUT
    return status


def _host_indexes(paths: list[str], quiet: bool, report: bool = True) -> bool:
    """Write the host index (X.pcap.idx, used by 'bulk extract') of closed traces
    that have none or a stale one; False if a trace could not be read."""
    from bulk.archive.hostindex import ensure_index_for  # noqa: PLC0415

    ok = True
    written = 0
    for path in paths:
        try:
            written += ensure_index_for(path)
        except (TraceError, OSError) as exc:
            if report:
                sys.stderr.write(f"bulk index: host index of {path}: {exc}\n")
                ok = False
    if not quiet:
        print(f"host indexes: {written} written")
    return ok
