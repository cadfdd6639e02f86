"""Benchmark: `bulk extract` against `tcpdump -r FILE -w OUT FILTER` on the same input.

1. Full scan of one big trace (default 500 MB, ``--size-mb`` up to 2048):
   a selective filter (a host in about 1 packet in 2,000) and a broad one
   (``tcp``), bulk and tcpdump alternately, best of ``--runs``; outputs are
   compared byte for byte.
2. The same trace compressed with ``zstd -3 -T2``: bulk extract on the .zst
   (decompression in a child feeding libpcap) against ``zstd -dc | tcpdump -r -``.
3. An archive of ``--files`` rotated traces (default 100 x 10 MB) where one host
   appears in only three of them, each with its host index: ``bulk extract --dir``
   against tcpdump run over every trace (one process per file, as a cron job
   would), and against ``bulk extract --no-index``. Index build time is reported.

Inputs are generated under bench/out/ (never committed) from the real packets of
the bundled traces: Ethernet packets replayed with their IPv4 addresses rewritten
per replica (last two octets XOR the replica number), so the archive holds
thousands of distinct hosts, and 37 microseconds between packets.

bulk runs as installed code would: with compiled bytecode (this repository's
environment sets PYTHONDONTWRITEBYTECODE; the benchmark caches bytecode under
bench/out/pycache instead, see bench/common.py), after one warm-up run.

    python bench/extract.py                      # 500 MB trace, 100-file archive
    python bench/extract.py --size-mb 2048 --runs 3
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import OUT, timed
from slicegen import real_packets

from bulk.archive.hostindex import write_index_for
from bulk.trace import pcap_header

T0_US = 1_795_780_800 * 1_000_000  # 2026-11-27 12:00:00 UTC
GAP_US = 37
RARE = bytes([198, 51, 100, 77])  # TEST-NET-2: never in the real traces
RARE_FILES = (40, 41, 42)
_REC = struct.Struct("<IIII")


def real_ethernet() -> list[bytes]:
    """The bundled traces' Ethernet frames long enough to hold an IPv4 header."""
    return [data for _wirelen, data in real_packets() if len(data) >= 34]


def _rewrite(data: bytes, k: int, rare: bool) -> bytes:
    if data[12:14] != b"\x08\x00":
        return data
    x0, x1 = (k >> 8) & 0xFF, k & 0xFF
    src = data[26:28] + bytes([data[28] ^ x0, data[29] ^ x1])
    dst = RARE if rare else data[30:32] + bytes([data[32] ^ x0, data[33] ^ x1])
    return data[:26] + src + dst + data[34:]


def write_trace(
    path: Path, pool: list[bytes], size: int, t_us: int, replica: Callable[[int], int],
    rare_every: int = 0,
) -> int:  # fmt: skip
    """Write ~``size`` bytes of replicas of ``pool``; returns the next timestamp."""
    tmp = path.with_suffix(".tmp")
    written = 24
    n = 0
    with open(tmp, "wb", buffering=1 << 20) as f:
        f.write(pcap_header(1, 262144, False))
        k = 0
        while written < size:
            rk = replica(k)
            for data in pool:
                n += 1
                d = _rewrite(data, rk, bool(rare_every) and n % rare_every == 0)
                f.write(_REC.pack(t_us // 1_000_000, t_us % 1_000_000, len(d), len(d)))
                f.write(d)
                written += 16 + len(d)
                t_us += GAP_US
                if written >= size:
                    break
            k += 1
    os.replace(tmp, path)
    return t_us


def best(runs: int, *cmds: Sequence[str] | str) -> list[tuple[float, float]]:
    """Best wall and best CPU time of each command, run alternately ``runs`` times."""
    times: list[list[tuple[float, float]]] = [[] for _ in cmds]
    for _ in range(runs):
        for i, cmd in enumerate(cmds):
            wall, cpu, _err = timed(cmd)
            times[i].append((wall, cpu))
    return [(min(w for w, _ in t), min(c for _, c in t)) for t in times]


def row(label: str, ours: tuple[float, float], ref: tuple[float, float], mb: float) -> None:
    print(
        f"| {label} | {ours[0]:.3f} s / {ours[1]:.3f} s | {ref[0]:.3f} s / {ref[1]:.3f} s | "
        f"{ours[0] / ref[0]:.2f}x / {ours[1] / ref[1]:.2f}x | {mb / ours[0]:,.0f} MB/s |"
    )


def bulk_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bulk", "extract", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=500, help="big trace size (max 2048)")
    ap.add_argument("--files", type=int, default=100, help="traces in the archive")
    ap.add_argument("--file-mb", type=float, default=10.0, help="size of each archive trace")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-zstd", action="store_true")
    ap.add_argument("--archive-only", action="store_true", help="only the archive part")
    args = ap.parse_args()
    if not 1 <= args.size_mb <= 2048:
        raise SystemExit("--size-mb must be 1..2048")
    tcpdump = shutil.which("tcpdump") or "tcpdump"
    OUT.mkdir(parents=True, exist_ok=True)
    pool = real_ethernet()

    big = OUT / f"extract-{args.size_mb}mb.pcap"
    if not big.exists():
        t = time.perf_counter()
        write_trace(big, pool, args.size_mb * 1_000_000, T0_US, lambda k: k % 4096)
        print(f"generated {big} in {time.perf_counter() - t:.1f} s")
    size_mb = big.stat().st_size / 1e6
    host = "141.142.228.2"  # 141.142.228.5 of zeek-http-get, replica 7: 1 replica in 4096
    out_b, out_t = OUT / "extract-bulk.pcap", OUT / "extract-tcpdump.pcap"
    timed(bulk_cmd("-r", str(big), "-w", str(out_b), f"host {host}"))  # warm-up, bytecode
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"\n## full scan, {size_mb:,.0f} MB, best of {args.runs} (alternating)\n")
    print("wall / CPU (user+system) seconds; ratio bulk/tcpdump, wall / CPU\n")
    print("| filter | bulk extract | tcpdump -r -w | ratio | bulk MB/s |")
    print("| --- | --- | --- | --- | --- |")
    for expr in () if args.archive_only else (f"host {host}", "tcp"):
        b, t = best(
            args.runs,
            bulk_cmd("-r", str(big), "-w", str(out_b), expr),
            [tcpdump, "-r", str(big), "-w", str(out_t), expr],
        )
        same = out_b.read_bytes() == out_t.read_bytes()
        row(
            f"`{expr}` ({out_t.stat().st_size / 1e6:,.1f} MB out, identical: {same})", b, t, size_mb
        )

    if not args.skip_zstd and not args.archive_only:
        zst = big.with_suffix(".pcap.zst")
        if not zst.exists():
            subprocess.run(["zstd", "-q", "-3", "-T2", "-f", str(big), "-o", str(zst)], check=True)
        print(f"\n## zstd-compressed copy ({zst.stat().st_size / 1e6:,.0f} MB)\n")
        print("| filter | bulk extract FILE.zst | zstd -dc \\| tcpdump -r - | ratio | MB/s |")
        print("| --- | --- | --- | --- | --- |")
        expr = f"host {host}"
        b, t = best(
            args.runs,
            bulk_cmd("-r", str(zst), "-w", str(out_b), expr),
            f"zstd -dc {zst} | "
            + shlex.join([tcpdump, "-r", "-", "-w", str(out_t), expr])
            + " 2>/dev/null",
        )
        row(f"`{expr}` (identical: {out_b.read_bytes() == out_t.read_bytes()})", b, t, size_mb)
        # The alternative the child+pipe design was chosen over: the trace layer's
        # Python reader with the compiled filter run per packet (bulk.trace.iter_packets).
        fallback = [
            sys.executable, "-c",
            "import sys; from bulk.trace import iter_packets, PcapWriter\n"
            "w = PcapWriter(sys.argv[2], 1)\n"
            "for p in iter_packets([sys.argv[1]], bpf=sys.argv[3]): w.write(p)\n"
            "w.close()",
            str(zst), str(OUT / "extract-fallback.pcap"), expr,
        ]  # fmt: skip
        f, t2 = best(
            max(1, args.runs - 1), fallback, bulk_cmd("-r", str(zst), "-w", str(out_b), expr)
        )
        same = (OUT / "extract-fallback.pcap").read_bytes() == out_b.read_bytes()
        row(f"Python reader + per-packet BPF vs bulk extract (identical: {same})", f, t2, size_mb)

    arch = OUT / f"extract-archive-{args.files}x{args.file_mb:g}mb"
    if not arch.exists():
        t = time.perf_counter()
        tmp = arch.with_name(arch.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        t_us = T0_US
        for i in range(args.files):
            name = tmp / f"bulk-20261127T{i // 60:02d}{i % 60:02d}00Z-eth0-{i:06d}.pcap"
            t_us = write_trace(
                name, pool, int(args.file_mb * 1e6), t_us, lambda k, i=i: (i * 64 + k) % 4096,
                rare_every=500 if i in RARE_FILES else 0,
            )  # fmt: skip
        os.replace(tmp, arch)
        print(f"\ngenerated {arch} in {time.perf_counter() - t:.1f} s")
    traces = sorted(str(p) for p in arch.glob("*.pcap"))
    arch_mb = sum(os.path.getsize(p) for p in traces) / 1e6
    t = time.perf_counter()
    for p in traces:
        write_index_for(p)
    t_index = time.perf_counter() - t
    idx_kb = sum(os.path.getsize(p + ".idx") for p in traces) / 1e3
    expr = f"host {'.'.join(map(str, RARE))}"
    per_file = " ; ".join(
        shlex.join([tcpdump, "-r", p, "-w", f"{OUT}/extract-td-{i}.pcap", expr]) + " 2>/dev/null"
        for i, p in enumerate(traces)
    )
    with_idx = shlex.join(bulk_cmd("--dir", str(arch), "-w", str(out_b), expr))
    no_idx = shlex.join(
        bulk_cmd("--dir", str(arch), "--no-index", "-w", str(out_b) + ".noidx", expr)
    )
    timed(with_idx)
    b, n, t = best(args.runs, with_idx, no_idx, per_file)
    ours = out_b.read_bytes()
    theirs = b"".join(
        Path(f"{OUT}/extract-td-{i}.pcap").read_bytes()[24:] for i in range(len(traces))
    )
    same = ours[24:] == theirs and Path(str(out_b) + ".noidx").read_bytes() == ours
    print(
        f"\n## archive: {len(traces)} traces, {arch_mb:,.0f} MB, host in {len(RARE_FILES)} "
        f"of them; best of {args.runs}\n"
    )
    print("| run | wall | CPU | ratio to tcpdump, wall / CPU |\n| --- | --- | --- | --- |")
    for label, v in (
        ("bulk extract --dir (host index)", b),
        ("bulk extract --dir --no-index", n),
        ("tcpdump -r -w, one run per trace", t),
    ):
        print(
            f"| {label} | {v[0]:.3f} s | {v[1]:.3f} s | {v[0] / t[0]:.3f}x / {v[1] / t[1]:.3f}x "
            f"({t[0] / v[0]:.1f} / {t[1] / v[1]:.1f} times faster) |"
        )
    print(
        f"\nsame packets as tcpdump: {same}; {len(ours) - 24:,} bytes out.\n"
        f"index build: {t_index:.1f} s for {arch_mb:,.0f} MB ({arch_mb / t_index:,.0f} MB/s, "
        f"in-process), {idx_kb:,.0f} kB of index files ({idx_kb / arch_mb / 10:.3f}% of the traces)"
    )


if __name__ == "__main__":
    main()
