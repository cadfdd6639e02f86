"""bulk slice against tcpslice: a 5-minute window of a big trace, raw and zstd.

    .venv/bin/python bench/slice.py [--size 500M] [--span 3600] [--window 300] [--reps 5]

Generates (once, kept under bench/out/) a time-ordered pcap of real packets
from tests/data spanning --span seconds, and its `bulk compress` copy (seekable
zstd, 4 MiB frames). Then, in the same run, with a warm page cache, the best of
--reps runs of:

  tcpslice  START +WINDOW raw.pcap              (the reference)
  bulk slice START +WINDOW raw.pcap             goal: <= 1.0x tcpslice
  zstd -dc raw.pcap.zst > tmp; tcpslice ... tmp (the reference for compressed)
  bulk slice START +WINDOW raw.pcap.zst         goal: <= 2.0x tcpslice on raw

and checks that all four outputs hold the same records. Bytes read are bulk's
own count (--stats: probes, frames and the window itself) over the input size.
It also times `bulk slice --show-window` on the same file (the fixed cost of
starting Python and the CLI, which imports every command), and the slice
command run alone through its module (`alone`, `alone-zst`): what `bulk slice`
costs once the CLI loads only the command it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from slicegen import T0, generate  # noqa: E402

BULK = [str(ROOT / ".venv" / "bin" / "bulk")]
# The slice command alone, without the CLI importing every other command first
# (what a CLI that loads only the chosen command would cost).
ALONE = [
    str(ROOT / ".venv" / "bin" / "python"),
    "-c",
    "import argparse, sys\n"
    "from bulk.commands import slice as m\n"
    "p = argparse.ArgumentParser()\n"
    "m.add_arguments(p)\n"
    "sys.exit(m.run(p.parse_args(sys.argv[1:])))",
]


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 10**6, "G": 10**9}[m.group(2)]


def _timed(cmd: list[str] | str, shell: bool = False) -> tuple[float, bytes]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, shell=shell, capture_output=True, check=False)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"failed: {cmd}: {proc.stderr.decode()}")
    return elapsed, proc.stderr


def _records(path: Path) -> bytes:
    return path.read_bytes()[24:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=_size, default=_size("500M"), help="trace size (max 2G)")
    ap.add_argument("--span", type=int, default=3600, help="seconds the trace spans")
    ap.add_argument("--window", type=int, default=300, help="window length in seconds")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if args.size > 2 * 10**9:
        ap.error("--size at most 2G")
    for tool in ("tcpslice", "zstd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    OUT.mkdir(parents=True, exist_ok=True)
    raw = OUT / f"slice-{args.size}-{args.span}.pcap"
    comp = OUT / (raw.name + ".zst")
    if not raw.exists():
        print(f"generating {raw} ...", flush=True)
        generate(raw, args.size, args.span)
    if not comp.exists():
        from bulk.compress.codec import CompressSettings, compress_file  # noqa: PLC0415

        print(f"compressing {comp} with bulk's seekable zstd writer ...", flush=True)
        tmp = comp.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            compress_file(str(raw), f, CompressSettings())
        tmp.rename(comp)
    start = str(T0 + args.span // 3)
    win = f"+{args.window}"
    outs = {
        k: OUT / f"slice-out-{k}.pcap"
        for k in ("tcpslice", "bulk", "ref-zst", "bulk-zst", "alone", "alone-zst")
    }
    tmp_pcap = OUT / "slice-zstdcat.pcap"
    runs = {
        "tcpslice": ["tcpslice", "-w", str(outs["tcpslice"]), start, win, str(raw)],
        "bulk": [*BULK, "slice", "-w", str(outs["bulk"]), "--stats", start, win, str(raw)],
        "ref-zst": f"zstd -q -d -c {comp} > {tmp_pcap} && tcpslice -w {outs['ref-zst']} "
        f"{start} {win} {tmp_pcap}",
        "bulk-zst": [*BULK, "slice", "-w", str(outs["bulk-zst"]), "--stats", start, win, str(comp)],
        "startup": [*BULK, "slice", "--show-window", start, win, str(raw)],
        "alone": [*ALONE, "-w", str(outs["alone"]), start, win, str(raw)],
        "alone-zst": [*ALONE, "-w", str(outs["alone-zst"]), start, win, str(comp)],
    }
    best: dict[str, float] = {}
    stats: dict[str, bytes] = {}
    for cmd in runs.values():  # warm the page cache and the interpreter's files
        _timed(cmd, shell=isinstance(cmd, str))
    for _ in range(args.reps):
        for name, cmd in runs.items():
            elapsed, err = _timed(cmd, shell=isinstance(cmd, str))
            best[name] = min(best.get(name, elapsed), elapsed)
            stats[name] = err
    tmp_pcap.unlink(missing_ok=True)
    same = {_records(p) for p in outs.values()}
    window_bytes = outs["bulk"].stat().st_size
    print(
        f"\ninput {raw.name}: {raw.stat().st_size:,} bytes, zstd copy {comp.stat().st_size:,}"
        f" bytes; window {args.window} s = {window_bytes:,} bytes of output"
    )
    print(f"outputs identical (records of all six): {len(same) == 1}")
    for name in ("bulk", "bulk-zst"):
        m = re.search(rb"read (\d+) bytes", stats[name])
        size = (raw if name == "bulk" else comp).stat().st_size
        if m:
            n = int(m.group(1))
            print(
                f"{name}: read {n:,} bytes = {100 * n / size:.2f}% of its input "
                f"({100 * (n - window_bytes) / size:.3f}% beyond the window's own bytes)"
                if name == "bulk"
                else f"{name}: read {n:,} compressed bytes = {100 * n / size:.2f}% of its input"
            )
    load = os.getloadavg()[0]
    print(f"best of {args.reps} (load average {load:.1f} on {os.cpu_count()} cores):")
    for name in runs:
        print(f"  {name:9s} {best[name] * 1000:8.1f} ms")
    r1 = best["bulk"] / best["tcpslice"]
    r2 = best["bulk-zst"] / best["tcpslice"]
    r3 = best["bulk-zst"] / best["ref-zst"]
    print(f"ratio bulk/tcpslice (raw):                 {r1:.2f}x  (goal <= 1.0)")
    print(f"ratio bulk on zstd / tcpslice on raw:      {r2:.2f}x  (goal <= 2.0)")
    print(f"ratio bulk on zstd / (zstd -d + tcpslice): {r3:.2f}x")
    print(f"CLI start-up (--show-window, no slicing):  {best['startup'] * 1000:.1f} ms")
    a1 = best["alone"] / best["tcpslice"]
    a2 = best["alone-zst"] / best["tcpslice"]
    print(f"slice module alone / tcpslice (raw):       {a1:.2f}x")
    print(f"slice module alone on zstd / tcpslice raw: {a2:.2f}x")
    for p in outs.values():
        p.unlink(missing_ok=True)
    return 0 if len(same) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
