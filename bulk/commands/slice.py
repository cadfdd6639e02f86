"""``bulk slice``: cut a time window out of traces without reading them whole."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, BinaryIO

from bulk.commands.inputs import gather_inputs
from bulk.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from bulk.slicing.slicer import SliceReport
    from bulk.slicing.sources import Source
    from bulk.timespec import TimeWindow

NAME = "slice"
HELP = "cut a time window out of traces or an archive, cheaply (tcpslice-compatible)"
DESCRIPTION = """\
Write the packets between START and END (both inclusive) of one or more traces,
or of a whole archive directory, as one pcap on standard output (never a
terminal) or to -w FILE. Works like tcpslice and takes the same times: an
uncompressed pcap is searched by interpolation with record-header
resynchronisation, so only a few kilobytes are read to find the window; a zstd
trace written in frames (bulk compress) is searched the same way,
decompressing only the frames needed; gzip, single-frame zstd, pcapng and
stdin are read from the start up to the end of the window. Several files are
merged in time order, and a packet found identically in two files is written
once (--keep-duplicates keeps both). Files must share one link type.

times (local time zone; see docs/timespec.md):
  1362692526.869344            seconds since the epoch (tcpdump -tt)
  +200  +0.5                   seconds after the first packet (START) or
                               after START (END)
  13h15m  22h  2m5d  5u        fields of the first packet's (START) or START's
                               (END) date; 'm' is a month only before a 'd'
  1990y9m25d20h51m38s765400u   a full local date and time
  +1h10m  +2d                  a calendar offset from the same reference
  2026-11-27T13:15:00Z         ISO 8601 (with an offset, or local without)
  '10m ago'  now               relative to the wall clock
START defaults to the first packet, END to the last. Positional arguments
that look like times are times (as in tcpslice): name such a file ./FILE.

examples:
  bulk slice 13h15m +5m bulk.pcap | tcpdump -r - -w good.pcap 'host 10.1.2.3'
  bulk slice +0 +1h -w first-hour.pcap trace.pcap
  bulk slice 2026-11-27T13:15Z +5m --dir /srv/bulk/traces -w incident.pcap
  bulk slice '10m ago' --dir /srv/bulk/traces | tcpdump -nr - | less
  bulk slice --list --dir /srv/bulk/traces        # first/last of each file
  bulk slice --show-window 22h +1h10m trace.pcap  # check what the times mean
"""

_TIME_FORMATS = ("raw", "readable", "parseable", "iso")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "args",
        nargs="*",
        metavar="[START [END]] FILE",
        help="optional start and end times, then traces ('-' is stdin)",
    )
    parser.add_argument("--start", help="start time (instead of a positional START)")
    parser.add_argument("--end", help="end time (instead of a positional END)")
    parser.add_argument(
        "--dir",
        action="append",
        default=[],
        metavar="DIR",
        help="an archive directory: slice every trace in it (repeatable)",
    )
    parser.add_argument(
        "--closed-only",
        action="store_true",
        help="with --dir, leave out the trace still being captured (*.open)",
    )
    parser.add_argument("-w", "--write", metavar="FILE", help="write to FILE, not stdout")
    parser.add_argument(
        "-D",
        "--keep-duplicates",
        action="store_true",
        help="keep packets found identically in several files (default: write once)",
    )
    parser.add_argument(
        "--scan",
        action="store_true",
        help="read every packet of every file instead of seeking: exact for files that "
        "are not in time order",
    )
    parser.add_argument(
        "-l",
        "--list",
        action="store_true",
        help="print each file's first and last packet time and exit (tcpslice -r)",
    )
    parser.add_argument(
        "--time-format",
        choices=_TIME_FORMATS,
        help="time format of --list (default readable, as tcpslice -r; raw is -R, "
        "parseable -t) and of --show-window (default raw, as tcpslice -d)",
    )
    parser.add_argument(
        "-d",
        "--show-window",
        action="store_true",
        help="print the resolved start and end times and exit (tcpslice -d)",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="report files used, packets and bytes read on stderr",
    )


def _split_positionals(args: argparse.Namespace) -> tuple[str | None, str | None, list[str]]:
    from bulk.timespec import looks_like_timespec  # noqa: PLC0415

    rest = list(args.args)
    start = end = None
    if rest and looks_like_timespec(rest[0]):
        start = rest.pop(0)
        if rest and looks_like_timespec(rest[0]):
            end = rest.pop(0)
    if args.start is not None:
        if start is not None:
            raise UsageError("give the start either as --start or as a positional time")
        start = args.start
    if args.end is not None:
        if end is not None:
            raise UsageError("give the end either as --end or as a positional time")
        end = args.end
    return start, end, rest


def _fmt_time(ts: int | None, style: str) -> str:
    from bulk import timespec  # noqa: PLC0415

    if ts is None:
        return "-"
    if style == "readable":
        return timespec.format_readable(ts)
    if style == "parseable":
        return timespec.format_parseable(ts)
    if style == "iso":
        return timespec.format_iso(ts)
    return timespec.format_raw(ts)


def _open_output(args: argparse.Namespace, paths: list[str]) -> tuple[BinaryIO, bool]:
    if args.write and args.write != "-":
        target = os.path.realpath(args.write)
        for p in paths:
            if p != "-" and os.path.realpath(p) == target:
                raise UsageError(f"-w {args.write} is also an input: it would be overwritten")
        try:
            return open(args.write, "wb"), True
        except OSError as exc:
            raise UsageError(f"cannot write {args.write}: {exc.strerror or exc}") from None
    if sys.stdout.isatty():
        raise UsageError("standard output is a terminal: redirect it, pipe it, or use -w FILE")
    return sys.stdout.buffer, False


def _open(
    args: argparse.Namespace, start: str | None, end: str | None, files: list[str]
) -> tuple[list[str], list[Source], TimeWindow | None, int]:
    """(paths, sources, window or None to resolve, files skipped by the catalogue)."""
    from bulk.slicing import slicer  # noqa: PLC0415

    paths, _listed = gather_inputs(
        files, args.dir, include_open=not args.closed_only, how="give trace files or --dir DIR"
    )
    if args.dir and not files and not args.list and "-" not in paths:
        from bulk.archive.listing import traces_in_dir  # noqa: PLC0415
        from bulk.slicing.archive import catalogued, plan_archive  # noqa: PLC0415

        candidates = []
        for directory in args.dir:
            found = catalogued(
                directory, traces_in_dir(directory, include_open=not args.closed_only)
            )
            if found is None:
                break
            candidates.extend(found)
        else:
            window, sources, skipped = plan_archive(candidates, start, end)
            return paths, sources, window, skipped
    return paths, slicer.open_sources(paths), None, 0


def run(args: argparse.Namespace) -> int:
    from bulk.slicing import slicer  # noqa: PLC0415

    start, end, files = _split_positionals(args)
    paths, sources, window, skipped = _open(args, start, end, files)
    try:
        if args.list:
            from bulk.slicing.sources import time_bounds  # noqa: PLC0415

            style = args.time_format or "readable"
            for s in sources:
                first, last = time_bounds(s, exact=True)
                print(f"{s.path}\t{_fmt_time(first, style)}\t{_fmt_time(last, style)}")
            return EXIT_OK
        if window is None:
            window = slicer.resolve(sources, start, end)
        if args.show_window:
            style = args.time_format or "raw"
            print(f"start\t{_fmt_time(window.start_ns, style)}")
            print(f"stop\t{_fmt_time(window.end_ns, style)}")
            return EXIT_OK
        out, owned = _open_output(args, paths)
        try:
            options = slicer.SliceOptions(keep_duplicates=args.keep_duplicates, scan_all=args.scan)
            report = slicer.write_slice(sources, window, out, options)
        finally:
            if owned:
                out.close()
        for warning in report.warnings:
            sys.stderr.write(f"bulk slice: warning: {warning}\n")
        if args.stats:
            _print_stats(report, paths, skipped)
    finally:
        slicer.close_all(sources)
    return EXIT_OK


def _print_stats(report: SliceReport, paths: list[str], skipped: int) -> None:
    size = sum(os.path.getsize(p) for p in paths if p != "-" and os.path.isfile(p))
    frac = f" ({100.0 * report.bytes_read / size:.3f}% of {size} input bytes)" if size else ""
    sys.stderr.write(
        f"bulk slice: window {_fmt_time(report.window.start_ns, 'iso')} .. "
        f"{_fmt_time(report.window.end_ns, 'iso')}; {len(report.files_used)} of "
        f"{report.files + skipped} files overlap ({skipped} ruled out by the catalogue); "
        f"{report.ranges_copied} ranges copied "
        f"({report.bytes_copied} bytes), {report.packets_merged} packets merged, "
        f"{report.duplicates} duplicates dropped; read {report.bytes_read} bytes{frac}\n"
    )
