"""Benchmark: `bulk backdoor` against `ndpiReader -i FILE` on the same trace.

The input (generated once under bench/out/, never committed) is made of the
real connections of the bundled traces: every untagged Ethernet IPv4 packet
of a selection of traces, replayed R times; replica k has its addresses
rewritten (second and third octets XOR k) so that each replica's
connections are distinct flows, and its times shifted so replicas follow one
another. Flow structure, payloads and sizes stay those of real traffic.

Both tools run on the same file in the same run, alternating, ``--runs``
times each, after one untimed warm-up run of each (bulk installed from a
wheel of this tree into bench/out/venv, as the sensor role installs it, not
the editable development install: see bench/common.py); every run prints
wall time, CPU time (user+sys) and peak RSS (ru_maxrss of the child) of
both tools and their ratios bulk / ndpiReader (below 1.0: bulk is faster);
then the best wall time of each and the median
of the per-run ratios.

    python bench/backdoor.py                  # default ~200 MB input
    python bench/backdoor.py --size-mb 50 --runs 1
    python bench/backdoor.py --input bench/out/contents-300mb.pcap
    python bench/backdoor.py --bulk /tmp/old/bin/bulk   # time another build
"""

from __future__ import annotations

import argparse
import heapq
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import installed_bulk, installed_env

from bulk.errors import TraceError
from bulk.trace import open_trace, pcap_header, record_header

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
OUT = ROOT / "bench" / "out"

TRACES = [
    "zeek-http-get.pcap",
    "http-on-port-5432.pcap",
    "ssh-on-port-80.pcap",
    "arkime-irc.pcap",
    "irc-dcc-send.pcapng",
    "ssh-dups.pcap",
    "zeek-ftp-retr.pcap",
    "arkime-wireshark-retrans.pcap",
    "suricata-telnet.pcap",
    "zeek-smtp.pcap",
    "http-single-conn-22.pcap",
    "ssl-and-ssh-using-sslh.pcap",
]
WINDOW_NS = 60 * 1_000_000_000  # each trace: its first minute
T0_NS = 1_795_780_800 * 1_000_000_000


def _packets() -> list[tuple[int, int, bytes]]:
    """(relative ts, wirelen, data) of the selected traces' untagged IPv4 packets."""
    streams = []
    for name in TRACES:
        pkts = []
        try:
            with open_trace(str(DATA / name)) as reader:
                first = None
                for p in reader:
                    if p.linktype != 1 or p.data[12:14] != b"\x08\x00":
                        continue
                    first = p.ts_ns if first is None else first
                    if p.ts_ns - first < WINDOW_NS:
                        pkts.append((p.ts_ns - first, p.wirelen, p.data))
        except TraceError:
            pass
        streams.append(sorted(pkts, key=lambda x: x[0]))
    return list(heapq.merge(*streams, key=lambda x: x[0]))


def generate(path: Path, size_mb: int) -> tuple[int, int]:
    """Write the benchmark input; returns (packets, replicas)."""
    base = _packets()
    per_replica = sum(16 + len(d) for _, _, d in base)
    replicas = max(1, size_mb * 1_000_000 // per_replica)
    span = max(t for t, _, _ in base) + 1_000_000_000
    n = 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        fh.write(pcap_header(1, 262144, False))
        for k in range(replicas):
            x2, x3 = (k >> 8) & 0xFF, k & 0xFF
            shift = T0_NS + k * span
            for t, wirelen, data in base:
                b = bytearray(data)
                for off in (27, 31):  # second octet of source and destination
                    b[off] ^= x2
                    b[off + 1] ^= x3
                fh.write(record_header(shift + t, len(b), wirelen, False))
                fh.write(b)
                n += 1
    tmp.rename(path)
    return n, replicas


def measure(cmd: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS KiB, CPU seconds) of one run, output discarded."""
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(
            cmd, stdout=devnull, stderr=subprocess.PIPE, cwd=ROOT, env=installed_env()
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {err.strip()}")
    return wall, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--input", type=Path, help="use this trace instead of generating one")
    ap.add_argument(
        "--bulk",
        metavar="CMD",
        help="the bulk command to time (e.g. another build's venv/bin/bulk) instead of "
        "installing this tree into bench/out/venv",
    )
    args = ap.parse_args()
    if shutil.which("ndpiReader") is None:
        raise SystemExit("ndpiReader not found (Debian package libndpi-bin)")
    if args.input:
        trace = args.input
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        trace = OUT / f"backdoor-{args.size_mb}mb.pcap"
        if not trace.exists():
            t = time.perf_counter()
            pkts, reps = generate(trace, args.size_mb)
            print(
                f"generated {trace} ({pkts} packets, {reps} replicas) "
                f"in {time.perf_counter() - t:.1f}s"
            )
    size = trace.stat().st_size
    bulk = [args.bulk] if args.bulk else installed_bulk()
    tools = {
        "bulk backdoor": [*bulk, "backdoor", "--json", "-r", str(trace)],
        "ndpiReader": ["ndpiReader", "-q", "-i", str(trace)],
    }
    for cmd in tools.values():
        measure(cmd)  # warm-up: page cache, bytecode cache
    best: dict[str, tuple[float, int]] = {}
    ratios: list[tuple[float, float, float]] = []
    print(
        f"input: {trace.name}, {size / 1e6:.1f} MB; {args.runs} runs; "
        f"load average {os.getloadavg()[0]:.2f} at start (shared 2-core machine)"
    )
    for i in range(args.runs):
        run: dict[str, tuple[float, int, float]] = {}
        for name, cmd in tools.items():
            run[name] = wall, rss, _cpu = measure(cmd)
            prev = best.get(name)
            best[name] = (min(wall, prev[0]) if prev else wall, max(rss, prev[1]) if prev else rss)
        (bw, br, bc), (nw, nr, nc) = run["bulk backdoor"], run["ndpiReader"]
        ratios.append((bw / nw, br / nr, bc / nc))
        print(
            f"  run {i + 1}: bulk {bw:.2f} s wall, {bc:.2f} s CPU, {br / 1024:.1f} MiB; "
            f"ndpiReader {nw:.2f} s wall, {nc:.2f} s CPU, {nr / 1024:.1f} MiB; "
            f"ratio wall {bw / nw:.2f}x, CPU {bc / nc:.2f}x, RSS {br / nr:.2f}x; "
            f"load {os.getloadavg()[0]:.2f}"
        )
    for name, (wall, rss) in best.items():
        print(
            f"  {name:14s} best wall {wall:7.2f} s  {size / 1e6 / wall:7.1f} MB/s  "
            f"peak RSS {rss / 1024:7.1f} MiB"
        )
    (bw, br), (nw, nr) = best["bulk backdoor"], best["ndpiReader"]
    print(f"ratio bulk/ndpiReader of the best runs: time {bw / nw:.2f}x, peak RSS {br / nr:.2f}x")
    med = [statistics.median(r[k] for r in ratios) for k in range(3)]
    print(
        f"median of the same-run ratios: wall {med[0]:.2f}x, CPU {med[2]:.2f}x, "
        f"peak RSS {med[1]:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
