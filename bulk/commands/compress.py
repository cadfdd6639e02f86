"""``bulk compress``: compress closed traces into seekable frames, then apply retention."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from bulk.compress.budget import Budget, budget_arg, parse_budget
from bulk.compress.codec import CompressSettings
from bulk.compress.retention import RetentionPolicy
from bulk.compress.run import RunOptions
from bulk.compress.run import run as run_compress
from bulk.config import load_config, parse_size
from bulk.errors import EXIT_FAILURE, EXIT_OK, UsageError
from bulk.timespec import duration_arg, parse_duration
from bulk.trace.framing import DEFAULT_FRAME_SIZE

NAME = "compress"
HELP = "compress closed traces (seekable zstd or gzip) and delete old ones (retention)"
DESCRIPTION = """\
Compress every closed trace of the archive (never the open one) into
independently decodable frames on packet boundaries, with a frame index, so
that 'bulk slice' and 'bulk extract' can seek inside compressed traces, while
'zstdcat f.pcap.zst | tcpdump -r -' still reads them (Wireshark opens the gzip
format directly; pipe zstd files to it). X.pcap becomes X.pcap.zst (or
X.pcap.gz) with the same times and mode.

Crash-safe: the compressed copy is written under a hidden temporary name,
every frame verified as it is written (read back, decompressed with its
checksum, compared byte for byte with the original), fsynced, its index
checked (size, packet count), renamed, recorded in the catalogue, and only
then is the original deleted. The next run finishes or
cleans up a run that was killed. Two runs on one archive never collide (a
lock in DIR/.bulk).

Retention, in the same run, after compression:
  --keep-days N     delete traces whose newest packet is more than N days old
  --max-disk 80%    keep the archive's filesystem at most 80% full
  --max-disk 500G   keep the archive's traces within 500 GiB
The oldest traces go first; the open file and files being compressed are
never deleted; every deletion is printed with its reason. --dry-run prints
the plan and changes nothing.

Durations read like 90s, 30m, 2h, 7d (a bare number is seconds); sizes like
500M, 10G, 2TiB (K/M/G/T are powers of 1024, KB/MB/GB of 1000).

examples:
  bulk compress --dir /srv/bulk/traces                  # every closed trace
  bulk compress --older-than 2h --keep-days 30 --max-disk 85%
  bulk compress --format gzip --level 6 --dry-run
  bulk compress --json | jq '.deleted[].reason'
  # cron, hourly: 17 * * * * bulk bulk compress --older-than 1h --max-disk 85%
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", help="archive directory (default: from the config, /srv/bulk/traces)"
    )
    parser.add_argument(
        "--older-than",
        type=duration_arg,
        metavar="AGE",
        help="only traces last modified at least AGE ago (default 0: every closed trace)",
    )
    parser.add_argument("--format", choices=("zstd", "gzip"), help="compression (default zstd)")
    parser.add_argument(
        "--level", type=int, metavar="N", help="compression level (default: zstd 3, gzip 6)"
    )
    parser.add_argument(
        "--keep-days", type=float, metavar="N", help="delete traces older than N days"
    )
    parser.add_argument(
        "--max-disk",
        type=budget_arg,
        metavar="PCT|SIZE",
        help="delete the oldest traces until the filesystem is at most PCT%% full, "
        "or the archive within SIZE",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="compression threads (default: the number of CPUs)",
    )
    parser.add_argument(
        "--frame-size",
        metavar="SIZE",
        help="uncompressed bytes per independently decodable frame (default 4M)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--json", action="store_true", help="print one JSON report at the end")


def _options(args: argparse.Namespace) -> RunOptions:
    cfg = load_config()
    directory = cfg.archive_dir(args.dir)
    fmt = str(cfg.pick(args.format, "compress", "format", "zstd"))
    if fmt not in ("zstd", "gzip"):
        raise UsageError(f"bad compression format {fmt!r}: zstd or gzip")
    level = int(cfg.pick(args.level, "compress", "level", 3 if fmt == "zstd" else 6))
    if fmt == "zstd" and not -7 <= level <= 22:
        raise UsageError(f"bad zstd level {level}: -7 to 22")
    if fmt == "gzip" and not 1 <= level <= 9:
        raise UsageError(f"bad gzip level {level}: 1 to 9")
    older = args.older_than
    if older is None:
        older = parse_duration(str(cfg.get("compress", "older_than", "0")))
    keep_days = cfg.pick(args.keep_days, "compress", "keep_days")
    if keep_days is not None:
        keep_days = float(keep_days)
        if keep_days < 0:
            raise UsageError(f"bad --keep-days {keep_days:g}: must not be negative")
    budget: Budget | None = args.max_disk
    if budget is None and cfg.get("compress", "max_disk") is not None:
        budget = parse_budget(str(cfg.get("compress", "max_disk")))
    threads = int(cfg.pick(args.threads, "compress", "threads", os.cpu_count() or 2))
    if threads < 1:
        raise UsageError("--threads must be at least 1")
    frame = cfg.pick(args.frame_size, "compress", "frame_size")
    frame_size = DEFAULT_FRAME_SIZE if frame is None else parse_size(frame, "frame size")
    if not 64 * 1024 <= frame_size <= 256 << 20:
        raise UsageError("--frame-size must be between 64K and 256M")
    return RunOptions(
        directory=directory,
        settings=CompressSettings(fmt, level, frame_size, threads),
        older_than_s=older,
        policy=RetentionPolicy(keep_days, budget),
        dry_run=args.dry_run,
    )


def run(args: argparse.Namespace) -> int:
    options = _options(args)
    out = sys.stderr if args.json else sys.stdout

    def log(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    report = run_compress(options, log)
    if args.json:
        import json  # noqa: PLC0415 - only for --json, ~2 ms of every start

        doc: dict[str, Any] = report.to_json()
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif not report.locked_out:
        before, after = report.usage_before, report.usage_after
        if before is not None and after is not None:
            verb = "would compress" if report.dry_run else "compressed"
            n = len(report.would_compress) if report.dry_run else len(report.compressed)
            log(
                f"summary: {verb} {n}, {'would delete' if report.dry_run else 'deleted'} "
                f"{len(report.deleted)}, failed {len(report.failed)}; filesystem "
                f"{before.percent:.1f}% -> {after.percent:.1f}% used"
            )
    return EXIT_FAILURE if report.failed else EXIT_OK
