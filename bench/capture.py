"""Benchmark: `bulk capture` against `tcpdump -w` and `netsniff-ng` on the same veth feed.

Two network namespaces joined by a veth pair (made here, no addresses, IPv6
off); `tcpreplay` pinned to CPU 0 sends, the capture tool pinned to CPU 1
writes pcap under bench/out/. For each input (64-byte frames; mixed sizes,
IMIX 7:4:1 of 64/576/1500 bytes) and each condition (CPU 1 otherwise idle; a
busy-loop CPU hog pinned to CPU 1 as well), every tool gets the same ladder
of send rates (`tcpreplay --pps`, then `--topspeed`), one second each, until
its first loss. Loss = packets tcpreplay sent - packets capinfos counts in
the tool's output. CPU = user+sys of the capture process and its children
(wait4); peak RSS = the highest VmHWM seen.

Printed per input and condition: the highest rate with zero loss, CPU seconds
per million packets (at the highest rate every tool sustained), peak RSS,
and the ratios bulk/tcpdump. Then an RSS-over-run-length check for bulk.

    python bench/capture.py                       # about 6 minutes on 2 cores
    python bench/capture.py --rates 100000,250000 --no-hog --tools bulk,tcpdump
    python bench/capture.py --interleave 5 --tools bulk,bulk-noindex,tcpdump

``--interleave N`` replaces the ladders: N rounds of one top-speed run per
tool and input, the tools taking turns (each net of its own run without
traffic), then per tool the median and range of CPU per packet and the ratio
to tcpdump in each round. A burst of load from outside then touches one round
of every tool rather than one tool's whole ladder.

Needs root (namespaces), tcpreplay, tcpdump, netsniff-ng, capinfos, taskset.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bulk.trace import PcapWriter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "capture"
INPUT_PACKETS = 20000
RING = 32 << 20  # every tool gets a 32 MiB kernel ring
SENDER_CPU, CAPTURE_CPU = "0", "1"
BULK_ARGS: list[str] = []


def _frame(size: int, i: int) -> bytes:
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    payload = max(size - 14 - 20 - 8, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        28 + payload,
        i & 0xFFFF,
        0,
        64,
        17,
        0,
        bytes([10, 99, 0, 1]),
        bytes([10, 99, 0, 2]),
    )
    udp = struct.pack("!HHHH", 1024 + i % 64, 9, 8 + payload, 0)
    return eth + ip + udp + bytes(payload)


def make_inputs() -> dict[str, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    sizes = {
        "small": [64] * INPUT_PACKETS,
        "mixed": rng.choices([64, 576, 1500], weights=[7, 4, 1], k=INPUT_PACKETS),
    }
    paths = {}
    for name, lens in sizes.items():
        path = OUT / f"{name}.pcap"
        if not path.exists():
            with PcapWriter(str(path), 1) as w:
                for i, n in enumerate(lens):
                    w.write_record(i * 1000, n, _frame(n, i))
        paths[name] = path
    return paths


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


class Link:
    def __init__(self) -> None:
        tag = str(os.getpid())
        self.sns, self.cns, self.sdev, self.cdev = (
            f"bbS{tag}",
            f"bbC{tag}",
            f"bbs{tag}",
            f"bbc{tag}",
        )

    def __enter__(self) -> Link:
        sh("ip", "netns", "add", self.sns)
        sh("ip", "netns", "add", self.cns)
        sh(
            "ip",
            "link",
            "add",
            self.sdev,
            "netns",
            self.sns,
            "type",
            "veth",
            "peer",
            "name",
            self.cdev,
            "netns",
            self.cns,
        )
        for ns, dev in ((self.sns, self.sdev), (self.cns, self.cdev)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.sns, self.cns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@dataclass
class Run:
    tool: str
    rate: int  # 0: top speed
    sent: int
    captured: int
    cpu_s: float
    rss_kib: int

    @property
    def lost(self) -> int:
        return self.sent - self.captured

    @property
    def cpu_per_mpkt(self) -> float:
        return self.cpu_s / max(self.captured, 1) * 1e6


def _tool_cmd(tool: str, dev: str, out: Path) -> list[str]:
    if tool.startswith("bulk"):
        extra = {
            "bulk-noindex": ["--no-index"],
            "bulk-pcapy": ["--engine", "pcapy", "--no-index"],
        }.get(tool, [])
        extra += BULK_ARGS
        return [
            sys.executable,
            "-m",
            "bulk",
            "capture",
            "-q",
            "-i",
            dev,
            "--dir",
            str(out),
            "--buffer",
            str(RING),
            "--rotate-bytes",
            "256M",
            *extra,
        ]
    if tool == "tcpdump":
        return [
            "tcpdump",
            "-i",
            dev,
            "-B",
            str(RING // 1024),
            "-s",
            "262144",
            "-w",
            str(out / "t.pcap"),
        ]
    return [
        "netsniff-ng",
        "-i",
        dev,
        "-o",
        str(out / "n.pcap"),
        "-s",
        "-S",
        f"{RING >> 20}MiB",
        "-b",
        CAPTURE_CPU,
    ]


def _ready(tool: str, out: Path, log: Path) -> bool:
    if tool.startswith("bulk"):
        return any((out / ".bulk").glob("capture-*.w0.json"))
    text = log.read_text(errors="replace") if log.exists() else ""
    return ("listening on" in text) if tool == "tcpdump" else ("Running!" in text)


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _count(out: Path) -> int:
    total = 0
    for f in sorted(out.glob("*.pcap")):
        res = subprocess.run(
            ["capinfos", "-T", "-r", "-c", str(f)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        fields = res.stdout.strip().split("\t")
        total += int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    return total


def one_run(link: Link, tool: str, pcap: Path, rate: int, packets: int) -> Run:
    out = OUT / f"run-{tool}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = OUT / f"run-{tool}.log"
    cmd = [
        "ip",
        "netns",
        "exec",
        link.cns,
        "taskset",
        "-c",
        CAPTURE_CPU,
        *_tool_cmd(tool, link.cdev, out),
    ]
    with open(log, "wb") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=lf, cwd=ROOT)
    rss = 0
    deadline = time.monotonic() + 30
    while not _ready(tool, out, log):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{tool} did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    time.sleep(0.3)
    sent = 0
    if packets:
        loops = max(1, -(-packets // INPUT_PACKETS))
        speed = ["--topspeed"] if rate == 0 else ["--pps", str(rate)]
        res = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                link.sns,
                "taskset",
                "-c",
                SENDER_CPU,
                "tcpreplay",
                "-q",
                *speed,
                f"--loop={loops}",
                "-i",
                link.sdev,
                str(pcap),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        m = re.search(r"Successful packets:\s+(\d+)", res.stdout)
        sent = int(m.group(1)) if m else loops * INPUT_PACKETS
    rss = max(rss, _hwm(proc.pid))
    # Every tool hands a partly filled ring block over after its timeout (tcpdump:
    # 1 s): wait for it, or the last packets count as lost.
    time.sleep(1.5)
    rss = max(rss, _hwm(proc.pid))
    proc.send_signal(signal.SIGINT)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    captured = _count(out)
    shutil.rmtree(out, ignore_errors=True)
    return Run(
        tool, rate, sent, captured, usage.ru_utime + usage.ru_stime, max(rss, usage.ru_maxrss)
    )


def ladder(link: Link, tool: str, pcap: Path, rates: list[int], seconds: float) -> list[Run]:
    """Runs at increasing rates until the first loss. CPU is net of a run without
    traffic (start-up and idle cost), so it is the cost of the packets."""
    base = one_run(link, tool, pcap, 1, 0).cpu_s
    runs = []
    for rate in rates:
        packets = int((rate or 600_000) * seconds)
        run = one_run(link, tool, pcap, rate, packets)
        run.cpu_s = max(run.cpu_s - base, 0.0)
        runs.append(run)
        label = "top speed" if rate == 0 else f"{rate:,} pps"
        print(
            f"    {tool:11s} {label:>12s}: sent {run.sent:>9,} lost {run.lost:>8,} "
            f"cpu {run.cpu_per_mpkt:6.2f} s/Mpkt  rss {run.rss_kib / 1024:6.1f} MiB  "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        if run.lost:
            break
    return runs


@contextlib.contextmanager
def hogging(cond: str) -> Iterator[None]:
    """For cond "hog": a busy loop pinned to the capture's CPU while the block runs."""
    if cond != "hog":
        yield
        return
    hog = subprocess.Popen(["taskset", "-c", CAPTURE_CPU, "sh", "-c", "while :; do :; done"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tools",
        default="bulk,bulk-noindex,tcpdump,netsniff-ng",
        help="bulk-noindex: bulk capture --no-index (the capture path and its time index, "
        "no host index); bulk-pcapy: --engine pcapy --no-index (the old capture path alone)",
    )
    ap.add_argument("--inputs", default="small,mixed")
    ap.add_argument(
        "--rates",
        default="100000,250000,400000,0",
        help="send rates in packets/s, 0 = tcpreplay --topspeed",
    )
    ap.add_argument("--seconds", type=float, default=1.0, help="traffic per step")
    ap.add_argument("--bulk-args", default="", help="extra bulk capture arguments")
    ap.add_argument("--no-hog", action="store_true", help="skip the CPU hog condition")
    ap.add_argument("--conditions", default="idle,hog", help="idle, hog or both")
    ap.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="N",
        help="instead of the ladders: N rounds of top-speed runs, tools taking turns",
    )
    ap.add_argument(
        "--rss-packets",
        type=int,
        default=3_000_000,
        help="packets of the long run for bulk's RSS check (0 skips it)",
    )
    ap.add_argument(
        "--long-conditions",
        default="idle",
        help="conditions of the long runs: idle, hog or both (idle,hog)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    tools = args.tools.split(",")
    BULK_ARGS.extend(args.bulk_args.split())
    rates = [int(r) for r in args.rates.split(",")]
    inputs = make_inputs()
    conditions = [c for c in args.conditions.split(",") if not (args.no_hog and c == "hog")]
    summary: list[str] = []
    if args.interleave:
        return interleaved(tools, args.inputs.split(","), conditions, args.interleave)
    with Link() as link:
        for cond in conditions:
            with hogging(cond):
                for name in args.inputs.split(","):
                    print(f"{name} packets, capture CPU {cond}:", flush=True)
                    results = {t: ladder(link, t, inputs[name], rates, args.seconds) for t in tools}
                    summary += _summarise(name, cond, results, rates)
        for cond in args.long_conditions.split(",") if args.rss_packets else []:
            print(
                f"long runs, top speed, mixed sizes, capture CPU {cond} (RSS against run length):",
                flush=True,
            )
            with hogging(cond):
                for tool in [t for t in tools if t.startswith("bulk") or t == "tcpdump"]:
                    for packets in (args.rss_packets // 10, args.rss_packets):
                        load = os.getloadavg()[0]
                        run = one_run(link, tool, inputs["mixed"], 0, packets)
                        line = (
                            f"long  {cond:4s} {tool:11s} {run.captured:>10,} of {run.sent:>10,} "
                            f"packets captured (lost {run.lost:,}): cpu "
                            f"{run.cpu_per_mpkt:.2f} s/Mpkt, peak RSS {run.rss_kib / 1024:.1f} "
                            f"MiB, load {load:.1f} -> {os.getloadavg()[0]:.1f}"
                        )
                        print(line, flush=True)
                        summary.append(line)
    print("\nsummary")
    for line in summary:
        print(line)
    return 0


def interleaved(tools: list[str], names: list[str], conditions: list[str], rounds: int) -> int:
    """Top-speed runs, tools taking turns round after round: medians and per-round ratios."""
    inputs = make_inputs()
    packets = 600_000  # about one second of tcpreplay's top speed
    summary: list[str] = []
    with Link() as link:
        for cond in conditions:
            with hogging(cond):
                runs: dict[tuple[str, str], list[Run]] = {}
                for r in range(rounds):
                    for name in names:
                        for tool in tools:
                            base = one_run(link, tool, inputs[name], 1, 0).cpu_s
                            run = one_run(link, tool, inputs[name], 0, packets)
                            run.cpu_s = max(run.cpu_s - base, 0.0)
                            runs.setdefault((name, tool), []).append(run)
                            print(
                                f"round {r} {name:5s} {cond:4s} {tool:12s} "
                                f"cpu {run.cpu_per_mpkt:6.3f} s/Mpkt lost {run.lost:,} "
                                f"rss {run.rss_kib / 1024:5.1f} MiB "
                                f"load {os.getloadavg()[0]:.1f}",
                                flush=True,
                            )
            for name in names:
                ref = runs.get((name, "tcpdump"))
                for tool in tools:
                    mine = runs[(name, tool)]
                    cpu = sorted(r.cpu_per_mpkt for r in mine)
                    line = (
                        f"{name:5s} {cond:4s} {tool:12s} cpu median {statistics.median(cpu):.3f} "
                        f"({cpu[0]:.3f}-{cpu[-1]:.3f}) s/Mpkt; lost {sum(r.lost for r in mine):,}; "
                        f"peak rss {max(r.rss_kib for r in mine) / 1024:.1f} MiB"
                    )
                    if ref is not None and tool != "tcpdump":
                        ratios = [
                            b.cpu_per_mpkt / max(t.cpu_per_mpkt, 1e-9)
                            for b, t in zip(mine, ref, strict=True)
                        ]
                        line += "; ratio to tcpdump per round " + " ".join(
                            f"{x:.2f}x" for x in ratios
                        )
                    summary.append(line)
    print("\nsummary")
    for line in summary:
        print(line)
    return 0


def _summarise(name: str, cond: str, results: dict[str, list[Run]], rates: list[int]) -> list[str]:
    def best(runs: list[Run]) -> str:
        ok = [r.rate for r in runs if r.lost == 0]
        if not ok:
            return "none"
        return "top speed" if 0 in ok else f"{max(ok):,} pps"

    # CPU per packet at the highest rate that every tool sustained without loss.
    common = [
        r
        for r in rates
        if all(any(x.rate == r and x.lost == 0 for x in runs) for runs in results.values())
    ]
    lines = []
    rate = common[-1] if common else None
    for tool, runs in results.items():
        at = next((r for r in runs if r.rate == rate), runs[0])
        lines.append(
            f"{name:5s} {cond:4s} {tool:11s} zero-loss up to {best(runs):>10s}; "
            f"cpu {at.cpu_per_mpkt:5.2f} s/Mpkt at {'top' if at.rate == 0 else at.rate}; "
            f"peak rss {max(r.rss_kib for r in runs) / 1024:5.1f} MiB; "
            f"top-speed loss {next((r.lost for r in runs if r.rate == 0), 'n/a')}"
        )
    for variant in ("bulk", "bulk-noindex", "bulk-pcapy"):
        if variant in results and "tcpdump" in results and rate is not None:
            b = next(r for r in results[variant] if r.rate == rate)
            t = next(r for r in results["tcpdump"] if r.rate == rate)
            lines.append(
                f"{name:5s} {cond:4s} ratio {variant}/tcpdump cpu per packet "
                f"{b.cpu_per_mpkt / max(t.cpu_per_mpkt, 1e-9):.2f}x"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
