"""Soak: `bulk capture` for a long time at a steady moderate rate, rotating every
minute, while `bulk compress` (compression + retention) and analyses run from a
"cron" loop; `tcpdump -w` captures the same feed as the reference.

Two network namespaces joined by a veth pair (made here, no addresses, IPv6
off). tcpreplay sends real Ethernet/IPv4 frames from tests/data (numbered in
the IPv4 identification field) in a loop at --rate packets/s for --minutes.
Every --cron-seconds: `bulk compress --older-than 0 --max-disk BUDGET`,
`bulk backdoor` over the newest closed trace and `bulk extract` of the last
two minutes of the archive. RSS and CPU of the capture (with its archiver)
and of tcpdump are sampled every few seconds.

Printed at the end: packets sent, captured and dropped by each tool (zero loss
means captured == sent and no kernel drop), rotations, compressions,
deletions, analysis runs (and failures), RSS over time (flat memory: the
last quarter's peak against the first quarter's), CPU seconds per million
packets and the ratios bulk/tcpdump. The figures go to
bench/out/soak/result.json as well.

    python bench/soak.py                  # 30 minutes (the soak)
    python bench/soak.py --minutes 2 --cron-seconds 20 --max-disk 40M   # quick proof

Needs root (namespaces), tcpreplay, tcpdump.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.traffic import tcpreplay_sent, write_numbered_pcap  # noqa: E402
from tests.integration.vethnet import LiveCapture, VethPair, veth_pair  # noqa: E402

OUT = ROOT / "bench" / "out" / "soak"
NUMBERED = 60000
SAMPLE_S = 5.0


@dataclass
class Sample:
    t: float
    bulk_rss_kib: int
    bulk_cpu_s: float
    tcpdump_rss_kib: int
    tcpdump_cpu_s: float


@dataclass
class Result:
    minutes: float
    rate: int
    sent: int = 0
    bulk_captured: int = 0
    bulk_drops: int = 0
    bulk_files: int = 0
    tcpdump_captured: int = 0
    tcpdump_drops: int = 0
    compress_runs: int = 0
    compress_failures: int = 0
    compressed: int = 0
    deleted: int = 0
    analysis_runs: int = 0
    analysis_failures: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def _tree_usage(pid: int) -> tuple[int, float]:
    """RSS (KiB) and CPU seconds of a process and its children."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0.0
    rss, cpu = 0, 0.0
    for p in procs:
        try:
            rss += p.memory_info().rss // 1024
            t = p.cpu_times()
            cpu += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return rss, cpu


def _bulk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulk", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )


class Cron(threading.Thread):
    """What the sensor's cron entries do, every ``every`` seconds."""

    def __init__(self, d: Path, every: float, budget: str, result: Result) -> None:
        super().__init__(daemon=True)
        self.d, self.every, self.budget, self.result = d, every, budget, result
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            r = self.result
            out = _bulk(
                "compress", "--dir", str(self.d), "--older-than", "0", "--max-disk", self.budget
            )
            r.compress_runs += 1
            r.compress_failures += out.returncode != 0
            r.compressed += len(re.findall(r"^compressed ", out.stdout, re.M))
            r.deleted += len(re.findall(r"^deleted ", out.stdout, re.M))
            closed = sorted(self.d.glob("bulk-*.pcap*"), key=lambda p: p.stat().st_mtime)
            closed = [p for p in closed if not p.name.endswith((".open", ".idx"))]
            runs = [["extract", "--dir", str(self.d), "--start", "2m ago", "-w", os.devnull, "tcp"]]
            if closed:
                runs.append(["backdoor", "-r", str(closed[-1]), "--json"])
            for args in runs:
                res = _bulk(*args)
                r.analysis_runs += 1
                if res.returncode not in (0, 3) or "Traceback" in res.stderr:
                    r.analysis_failures.append(
                        f"bulk {args[0]} exit {res.returncode}: {res.stderr.strip()[-200:]}"
                    )


def soak(pair: VethPair, args: argparse.Namespace, result: Result) -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    d = OUT / "archive"
    feed = OUT / "numbered.pcap"
    write_numbered_pcap(feed, NUMBERED)
    seconds = int(args.minutes * 60)
    cap = LiveCapture(
        pair, d, "--rotate-seconds", str(args.rotate_seconds), "--align", "--buffer", "32M"
    ).start()
    td_log = OUT / "tcpdump.log"
    with open(td_log, "wb") as log:
        tcpdump = subprocess.Popen(
            pair.ns_cmd(
                pair.capture_ns, "tcpdump", "-i", pair.capture_dev, "-B", "32768", "-q",
                "-Z", "root", "-w", str(OUT / "tcpdump.pcap"), "-C", "50", "-W", "3",
            ),
            stdout=log, stderr=log,
        )  # fmt: skip
    time.sleep(2)  # tcpdump's socket open before the first packet
    cron = Cron(d, args.cron_seconds, args.max_disk, result)
    loops = math.ceil(seconds * args.rate / NUMBERED) + 1
    replay = subprocess.Popen(
        pair.ns_cmd(
            pair.sender_ns, "tcpreplay", "--pps", str(args.rate), "--loop", str(loops),
            "--duration", str(seconds), "-i", pair.sender_dev, str(feed),
        ),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    cron.start()
    t0 = time.monotonic()
    try:
        while replay.poll() is None:
            assert cap.proc is not None
            b_rss, b_cpu = _tree_usage(cap.proc.pid)
            t_rss, t_cpu = _tree_usage(tcpdump.pid)
            result.samples.append(Sample(time.monotonic() - t0, b_rss, b_cpu, t_rss, t_cpu))
            done = time.monotonic() - t0
            print(
                f"\r{done / 60:5.1f}/{args.minutes:g} min  bulk RSS {b_rss / 1024:6.1f} MiB  "
                f"tcpdump RSS {t_rss / 1024:5.1f} MiB  compress runs {result.compress_runs}  "
                f"deleted {result.deleted}",
                end="",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(SAMPLE_S)
        print(file=sys.stderr)
        out, _ = replay.communicate()
        result.sent = tcpreplay_sent(out)
        time.sleep(2)  # the last frames reach both rings
    finally:
        cron.stop.set()
        cron.join(600)
        if replay.poll() is None:
            replay.kill()
        if tcpdump.poll() is None:
            tcpdump.send_signal(signal.SIGTERM)
        tcpdump.wait(60)
        code = cap.stop()
    log_text = cap.log_text()
    if code != 0:
        raise SystemExit(f"bulk capture exited {code}: {log_text[-2000:]}")
    result.bulk_captured = sum(int(n) for n in re.findall(r"\): (\d+) packets", log_text))
    result.bulk_drops = sum(
        int(n) for n in re.findall(r"packets, \d+ bytes, (\d+) drops", log_text)
    )
    result.bulk_files = len(re.findall(r": closed \S+ \(", log_text))
    td = td_log.read_text(errors="replace")
    m = re.search(r"(\d+) packets? captured", td)
    result.tcpdump_captured = int(m.group(1)) if m else -1
    m = re.search(r"(\d+) packets? dropped by kernel", td)
    result.tcpdump_drops = int(m.group(1)) if m else -1


def report(result: Result) -> str:
    s = result.samples
    lines = [
        f"soak: {result.minutes:g} min at {result.rate} packets/s, rotation every minute "
        "(machine shared and loaded: figures are indicative)",
        f"  sent by tcpreplay:       {result.sent:,}",
        f"  bulk capture:            {result.bulk_captured:,} packets in {result.bulk_files} "
        f"files, {result.bulk_drops} kernel drops, loss {result.sent - result.bulk_captured:,}",
        f"  tcpdump -w (reference):  {result.tcpdump_captured:,} packets, "
        f"{result.tcpdump_drops} kernel drops, loss {result.sent - result.tcpdump_captured:,}",
        f"  bulk compress:           {result.compress_runs} runs ({result.compress_failures} "
        f"failed), {result.compressed} traces compressed, {result.deleted} deleted by retention",
        f"  analyses:                {result.analysis_runs} runs, "
        f"{len(result.analysis_failures)} failed",
    ]
    for f in result.analysis_failures[:5]:
        lines.append(f"    {f}")
    if len(s) >= 8:
        q = max(len(s) // 4, 1)
        first, last = s[:q], s[-q:]
        b_first = max(x.bulk_rss_kib for x in first) / 1024
        b_last = max(x.bulk_rss_kib for x in last) / 1024
        t_first = max(x.tcpdump_rss_kib for x in first) / 1024
        t_last = max(x.tcpdump_rss_kib for x in last) / 1024
        lines.append(
            f"  RSS, capture + archiver: first quarter peak {b_first:.1f} MiB, last quarter "
            f"peak {b_last:.1f} MiB, overall peak {max(x.bulk_rss_kib for x in s) / 1024:.1f} "
            f"MiB, median {statistics.median(x.bulk_rss_kib for x in s) / 1024:.1f} MiB"
        )
        lines.append(
            f"  RSS, tcpdump:            first quarter peak {t_first:.1f} MiB, last quarter "
            f"peak {t_last:.1f} MiB"
        )
        flat = b_last - b_first <= 8
        lines.append(f"  memory flat (last - first quarter <= 8 MiB): {'yes' if flat else 'NO'}")
        mpkt = max(result.sent, 1) / 1e6
        b_cpu, t_cpu = s[-1].bulk_cpu_s, s[-1].tcpdump_cpu_s
        lines.append(
            f"  CPU per million packets: bulk {b_cpu / mpkt:.2f} s, tcpdump {t_cpu / mpkt:.2f} s "
            f"(ratio {b_cpu / max(t_cpu, 1e-9):.2f}x; bulk includes its archiver)"
        )
    zero = result.sent == result.bulk_captured and result.bulk_drops == 0
    lines.append(f"  zero loss: {'yes' if zero else 'NO'}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to send (default 30)")
    ap.add_argument("--rate", type=int, default=2000, help="packets per second (default 2000)")
    ap.add_argument("--rotate-seconds", type=int, default=60, help="rotation (default 60)")
    ap.add_argument("--cron-seconds", type=float, default=60.0, help="cron loop period")
    ap.add_argument("--max-disk", default="256M", help="retention budget (default 256M)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    for tool in ("tcpreplay", "tcpdump", "ip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool}")
    result = Result(args.minutes, args.rate)
    with veth_pair() as pair:
        soak(pair, args, result)
    text = report(result)
    print(text)
    (OUT / "result.json").write_text(json.dumps(asdict(result), indent=1))
    return 0 if result.sent == result.bulk_captured and result.bulk_drops == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
