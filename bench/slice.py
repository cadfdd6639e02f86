"""bulk slice against tcpslice: a 5-minute window of a big trace, raw and zstd.

    .venv/bin/python bench/slice.py [--size 500M] [--span 3600] [--window 300] [--reps 5]

Generates (once, kept under bench/out/) a time-ordered pcap of real packets
from tests/data spanning --span seconds, and its `bulk compress` copy (seekable
zstd, 4 MiB frames). Then, in the same run, with a warm page cache, the best of
--reps runs (all variants in turn, each output file removed before its run) of:

  tcpslice  START +WINDOW raw.pcap              (the reference)
  bulk slice START +WINDOW raw.pcap             goal: <= 1.0x tcpslice
  zstd -dc raw.pcap.zst > tmp; tcpslice ... tmp (the reference for compressed)
  bulk slice START +WINDOW raw.pcap.zst         goal: <= 2.0x tcpslice on raw

and checks that all four outputs hold the same records. Wall and CPU time
(user + system of the process and its children) are both reported: on a
shared, loaded machine the CPU ratios are the steadier ones. Bytes read are
bulk's own count (one more, untimed run with --stats: probes, frames and the
window itself) over the input size. Two fixed costs are timed as well:
`python -c pass` in the same environment (the interpreter and its site
packages) and `bulk slice --show-window` (start-up: interpreter, imports,
argument parsing, finding first and last packets; no slicing).

bulk runs as the sensor role installs it: from a wheel of this tree, in its
own virtualenv under bench/out/venv, with the bytecode pip compiled
(bench/common.py, installed_bulk; not the editable development install, whose
import hook costs ~15 ms per start), after one warm-up run. Every run, the
references included, gets that install's environment (installed_env).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

from common import OUT, installed_bulk, installed_env, timed
from slicegen import T0, generate


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 10**6, "G": 10**9}[m.group(2)]


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
    bulk = installed_bulk()
    python = str(Path(bulk[0]).with_name("python"))
    env = installed_env()
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
    outs = {k: OUT / f"slice-out-{k}.pcap" for k in ("tcpslice", "bulk", "ref-zst", "bulk-zst")}
    tmp_pcap = OUT / "slice-zstdcat.pcap"
    runs: dict[str, list[str] | str] = {
        "tcpslice": ["tcpslice", "-w", str(outs["tcpslice"]), start, win, str(raw)],
        "bulk": [*bulk, "slice", "-w", str(outs["bulk"]), start, win, str(raw)],
        "ref-zst": f"zstd -q -d -c {comp} > {tmp_pcap} && tcpslice -w {outs['ref-zst']} "
        f"{start} {win} {tmp_pcap}",
        "bulk-zst": [*bulk, "slice", "-w", str(outs["bulk-zst"]), start, win, str(comp)],
        "startup": [*bulk, "slice", "--show-window", start, win, str(raw)],
        "python": [python, "-c", "pass"],
    }

    def clear(name: str | None = None) -> None:
        """Remove the output of run ``name`` (None: of all), so that no run pays
        for truncating the previous one's output."""
        for k, p in (*outs.items(), ("ref-zst", tmp_pcap)):
            if name is None or k == name:
                p.unlink(missing_ok=True)

    for name, cmd in runs.items():  # warm the page cache
        clear(name)
        timed(cmd, env)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.reps):
        for name, cmd in runs.items():
            clear(name)
            elapsed, cpu, _err = timed(cmd, env)
            w, c = best.get(name, (elapsed, cpu))
            best[name] = (min(w, elapsed), min(c, cpu))
    same = {_records(p) for p in outs.values()}
    window_bytes = outs["bulk"].stat().st_size
    read: dict[str, int] = {}
    for name, src in (("bulk", raw), ("bulk-zst", comp)):
        clear(name)
        _w, _c, err = timed(
            [*bulk, "slice", "-w", str(outs[name]), "--stats", start, win, str(src)], env
        )
        m = re.search(rb"read (\d+) bytes", err)
        if m:
            read[name] = int(m.group(1))
    clear()
    print(
        f"\ninput {raw.name}: {raw.stat().st_size:,} bytes, zstd copy {comp.stat().st_size:,}"
        f" bytes; window {args.window} s = {window_bytes:,} bytes of output"
    )
    print(f"outputs identical (records of all four): {len(same) == 1}")
    if "bulk" in read:
        n, size = read["bulk"], raw.stat().st_size
        print(
            f"bulk: read {n:,} bytes = {100 * n / size:.2f}% of its input "
            f"({100 * (n - window_bytes) / size:.3f}% beyond the window's own bytes)"
        )
    if "bulk-zst" in read:
        n, size = read["bulk-zst"], comp.stat().st_size
        print(f"bulk-zst: read {n:,} compressed bytes = {100 * n / size:.2f}% of its input")
    load = os.getloadavg()
    print(
        f"best of {args.reps}, wall / CPU (load average {load[0]:.1f} {load[1]:.1f} "
        f"{load[2]:.1f} on {os.cpu_count()} cores):"
    )
    for name in runs:
        print(f"  {name:9s} {best[name][0] * 1000:8.1f} ms / {best[name][1] * 1000:7.1f} ms")

    def ratio(a: str, b: str) -> str:
        return f"{best[a][0] / best[b][0]:.2f}x / {best[a][1] / best[b][1]:.2f}x"

    print("ratios, wall / CPU:")
    print(f"  bulk / tcpslice (raw):                 {ratio('bulk', 'tcpslice')}  (goal <= 1.0)")
    print(
        f"  bulk on zstd / tcpslice on raw:        {ratio('bulk-zst', 'tcpslice')}  (goal <= 2.0)"
    )
    print(f"  bulk on zstd / (zstd -d + tcpslice):   {ratio('bulk-zst', 'ref-zst')}")
    return 0 if len(same) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
