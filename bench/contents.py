"""Benchmark: `bulk contents` against `tcpflow -r FILE -o DIR` on the same trace.

The input (generated once under bench/out/, never committed) is made of the
real TCP connections of the bundled traces (every Ethernet IPv4/IPv6 TCP
packet, VLAN tags kept, in file order so reordered and duplicated segments
stay so). Replica k of trace t has its addresses rewritten (IPv4: first
octet 10+t, second octet k mod 256, third octet XOR k/256; IPv6 likewise in
the prefix) so every replica is a distinct set of connections, and its
packet times shifted by k * spacing so replicas overlap in time: many
connections are open at once, as on a real link. Gaps longer than 0.5 s
inside a trace are shortened to 0.5 s.

Both tools run on the same file in the same run (each --runs times); the
best wall time and the peak RSS (ru_maxrss of that child alone) are printed
with the ratio bulk / tcpflow (below 1.0: bulk is faster; the issue's goal
is at most 0.7).

    python bench/contents.py                 # ~300 MB input
    python bench/contents.py --size-mb 2000  # the issue's 2 GB case
    python bench/contents.py --size-mb 50 --runs 1 --profile
"""

from __future__ import annotations

import argparse
import heapq
import os
import pstats
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bulk.errors import TraceError
from bulk.trace import open_trace

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
OUT = ROOT / "bench" / "out"
BULK = [sys.executable, "-m", "bulk"]
T0_NS = 1_795_780_800 * 1_000_000_000
MAX_GAP_NS = 500_000_000
SPACING_NS = 2_000_000  # replica k starts k * 2 ms after replica 0


def _ip_offset(data: bytes) -> int:
    """Offset of the IP header in an Ethernet frame (VLAN tags allowed), -1 if not IP."""
    off = 12
    while len(data) >= off + 2:
        et = (data[off] << 8) | data[off + 1]
        if et in (0x8100, 0x88A8):
            off += 4
            continue
        if et in (0x0800, 0x86DD):
            return off + 2
        return -1
    return -1


def _templates() -> list[list[tuple[int, int, int, bytes]]]:
    """Per trace: (relative ts, ip offset, wirelen, data) of its TCP packets."""
    out = []
    for path in sorted(DATA.glob("*.pcap*")):
        pkts: list[tuple[int, int, int, bytes]] = []
        last = None
        rel = 0
        try:
            with open_trace(str(path)) as reader:
                for p in reader:
                    if p.linktype != 1:
                        continue
                    off = _ip_offset(p.data)
                    if off < 0 or len(p.data) < off + 40:
                        continue
                    v = p.data[off] >> 4
                    proto = p.data[off + 9] if v == 4 else p.data[off + 6]
                    if proto != 6:
                        continue
                    if last is not None:
                        rel += min(max(p.ts_ns - last, 0), MAX_GAP_NS)
                    last = p.ts_ns
                    pkts.append((rel, off, p.wirelen, p.data))
        except TraceError:
            pass
        if pkts:
            out.append(pkts)
    return out


def _rewrite(data: bytes, off: int, t: int, k: int) -> bytes:
    b = bytearray(data)
    if b[off] >> 4 == 4:
        for a in (off + 12, off + 16):
            b[a] = 10 + t
            b[a + 1] = k & 0xFF
            b[a + 2] ^= (k >> 8) & 0xFF
    else:
        for a in (off + 8, off + 24):
            b[a : a + 4] = bytes((0x20, 0x01, t, k & 0xFF))
            b[a + 4] ^= (k >> 8) & 0xFF
    return bytes(b)


def generate(path: Path, size_mb: int) -> tuple[int, int]:
    """Write the benchmark trace; returns (packets, bytes)."""
    templates = _templates()
    per_replica = sum(16 + len(d) for tpl in templates for _r, _o, _w, d in tpl)
    replicas = max(1, size_mb * 1_000_000 // per_replica)

    def replica(k: int) -> Iterator[tuple[int, int, bytes]]:
        streams = [
            (
                (T0_NS + k * SPACING_NS + t * 997 + rel, w, _rewrite(d, o, t, k))
                for rel, o, w, d in tpl
            )
            for t, tpl in enumerate(templates)
        ]
        return heapq.merge(*streams, key=lambda x: x[0])

    header = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)  # nanosecond pcap
    rec = struct.Struct("<IIII").pack
    n = 0
    tmp = path.with_suffix(".part")
    with open(tmp, "wb", buffering=1 << 20) as f:
        f.write(header)
        for ts, wire, data in heapq.merge(
            *(replica(k) for k in range(replicas)), key=lambda x: x[0]
        ):
            sec, ns = divmod(ts, 1_000_000_000)
            f.write(rec(sec, ns, len(data), wire))
            f.write(data)
            n += 1
    os.replace(tmp, path)
    return n, path.stat().st_size


def measure(cmd: list[str]) -> tuple[float, float, int]:
    """Run ``cmd``; (wall seconds, CPU seconds, peak RSS in KiB) of that child."""
    with tempfile.TemporaryFile() as errf:  # a pipe would block a chatty tool
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            errf.seek(0)
            err = errf.read()[-2000:].decode(errors="replace")
            raise SystemExit(f"{' '.join(cmd)} failed ({status}): {err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def count_files(d: Path) -> tuple[int, int]:
    files = [
        p for p in d.iterdir() if p.is_file() and p.name.startswith(("contents.", "0", "1", "2"))
    ]
    files = [p for p in files if not p.name.endswith((".jsonl", ".xml"))]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mb", type=int, default=300, help="input size (default 300)")
    ap.add_argument("--runs", type=int, default=2, help="runs per tool, best time kept")
    ap.add_argument("--profile", action="store_true", help="also profile bulk (cProfile, top 25)")
    ap.add_argument("--keep", action="store_true", help="keep the output directories")
    args = ap.parse_args()
    if shutil.which("tcpflow") is None:
        raise SystemExit("tcpflow is not installed (apt-get install tcpflow)")
    OUT.mkdir(parents=True, exist_ok=True)
    trace = OUT / f"contents-{args.size_mb}mb.pcap"
    if not trace.exists():
        t0 = time.perf_counter()
        n, size = generate(trace, args.size_mb)
        print(
            f"generated {trace} ({n} packets, {size / 1e6:.0f} MB)"
            f" in {time.perf_counter() - t0:.1f} s"
        )
    size = trace.stat().st_size
    best: dict[str, tuple[float, float, int, int, int]] = {}
    for _ in range(args.runs):
        for tool in ("bulk", "tcpflow"):
            out = OUT / f"contents-out-{tool}"
            shutil.rmtree(out, ignore_errors=True)
            if tool == "bulk":
                cmd = [*BULK, "contents", "-q", "-r", str(trace), "-o", str(out)]
            else:
                out.mkdir()
                cmd = ["tcpflow", "-r", str(trace), "-o", str(out)]
            wall, cpu, rss = measure(cmd)
            nfiles, nbytes = count_files(out)
            if tool not in best or wall < best[tool][0]:
                best[tool] = (wall, cpu, rss, nfiles, nbytes)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    print(f"input: {trace.name}, {size / 1e6:.0f} MB")
    print(
        f"{'tool':8} {'wall s':>8} {'cpu s':>7} {'MB/s':>7} {'peak RSS MiB':>13}"
        f" {'files':>7} {'bytes':>12}"
    )
    for tool, (wall, cpu, rss, nfiles, nbytes) in best.items():
        print(
            f"{tool:8} {wall:8.2f} {cpu:7.2f} {size / 1e6 / wall:7.1f} {rss / 1024:13.1f}"
            f" {nfiles:7} {nbytes:12}"
        )
    ratio = best["bulk"][0] / best["tcpflow"][0]
    cratio = best["bulk"][1] / best["tcpflow"][1]
    print(f"ratio bulk/tcpflow wall time: {ratio:.2f} (goal <= 0.70); cpu time: {cratio:.2f}")
    if args.profile:
        prof = OUT / "contents.prof"
        out = OUT / "contents-out-prof"
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(prof),
                "-m",
                "bulk",
                "contents",
                "-q",
                "-r",
                str(trace),
                "-o",
                str(out),
            ],
            check=True,
        )
        shutil.rmtree(out, ignore_errors=True)
        pstats.Stats(str(prof)).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
