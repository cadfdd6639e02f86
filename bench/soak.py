"""Soak: `bulk capture` for a long time at a steady moderate rate, rotating every
minute, while `bulk compress` (compression + retention) and analyses run from a
"cron" loop; `tcpdump -w` captures the same feed as the reference.

Two network namespaces joined by a veth pair (made here, no addresses, IPv6
off). tcpreplay sends real Ethernet/IPv4 frames from tests/data (numbered in
the IPv4 identification field) in a loop at --rate packets/s for --minutes.
Every --cron-seconds: `bulk compress --older-than 0 --max-disk BUDGET`,
`bulk extract` of the last two minutes of the archive and `bulk backdoor` over
the newest closed trace. RSS and CPU of the capture process, of its archiver
and of tcpdump are sampled every few seconds; each cron job's peak RSS comes
from wait4() (ru_maxrss) when it ends.

Printed at the end: packets sent, captured and dropped by each tool (zero loss
means captured == sent and no kernel drop), rotations, compressions,
deletions and compression ratio, analysis runs (and failures), RSS over time
of the capture, its archiver, tcpdump and each cron job (flat memory: the
last quarter's peak against the first quarter's), CPU seconds per million
packets and the ratios bulk/tcpdump, the load average. The figures go to
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
import subprocess
import sys
import tempfile
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
    bulk_rss_kib: int  # the capture process
    archiver_rss_kib: int  # its archiver (child process)
    bulk_cpu_s: float  # both
    tcpdump_rss_kib: int
    tcpdump_cpu_s: float


@dataclass
class JobRun:
    """One cron job run: when it started (s into the soak), how long, its peak RSS."""

    job: str
    t: float
    seconds: float
    peak_rss_kib: int
    status: int


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
    compressed_in_bytes: int = 0
    compressed_out_bytes: int = 0
    deleted: int = 0
    analysis_runs: int = 0
    analysis_failures: list[str] = field(default_factory=list)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    samples: list[Sample] = field(default_factory=list)
    jobs: list[JobRun] = field(default_factory=list)


def _usage(proc: psutil.Process) -> tuple[int, float]:
    """RSS (KiB) and CPU seconds of one process (0 once it is gone)."""
    try:
        t = proc.cpu_times()
        return proc.memory_info().rss // 1024, t.user + t.system
    except psutil.NoSuchProcess:
        return 0, 0.0


def _capture_usage(pid: int) -> tuple[int, int, float]:
    """RSS (KiB) of the capture process, RSS of its children (the archiver), and
    CPU seconds of all of them."""
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0, 0.0
    rss, cpu = _usage(proc)
    child_rss = 0
    for child in children:
        r, c = _usage(child)
        child_rss += r
        cpu += c
    return rss, child_rss, cpu


def _units(text: str) -> int:
    """Bytes of a size as ``bulk compress`` prints it (``ls -h``: ``97B``, ``812.0K``)."""
    return int(float(text[:-1]) * 1024 ** "BKMGT".index(text[-1]))


def _bulk(*args: str) -> tuple[int, str, str, float, int]:
    """Run ``bulk ARGS``: exit status, stdout, stderr, wall seconds, peak RSS (KiB,
    from wait4's rusage: this process alone). Killed after 600 s."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "bulk", *args], stdout=out, stderr=err,
                                cwd=ROOT)  # fmt: skip
        timer = threading.Timer(600, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return proc.returncode, *text, time.monotonic() - t0, usage.ru_maxrss


class Cron(threading.Thread):
    """What the sensor's cron entries do, every ``every`` seconds."""

    def __init__(self, d: Path, every: float, budget: str, result: Result, t0: float) -> None:
        super().__init__(daemon=True)
        self.d, self.every, self.budget, self.result, self.t0 = d, every, budget, result, t0
        self.stop = threading.Event()

    def job(self, name: str, *args: str) -> tuple[int, str, str]:
        t = time.monotonic() - self.t0
        code, out, err, seconds, rss = _bulk(*args)
        self.result.jobs.append(JobRun(name, round(t, 1), round(seconds, 2), rss, code))
        return code, out, err

    def run(self) -> None:
        while not self.stop.wait(self.every):
            r = self.result
            code, out, err = self.job(
                "compress", "compress", "--dir", str(self.d), "--older-than", "0",
                "--max-disk", self.budget,
            )  # fmt: skip
            r.compress_runs += 1
            r.compress_failures += code != 0 or "Traceback" in err
            for m in re.finditer(r"^compressed \S+ -> \S+: ([\d.]+[BKMGT]) -> ([\d.]+[BKMGT])",
                                 out, re.M):  # fmt: skip
                r.compressed += 1
                r.compressed_in_bytes += _units(m.group(1))
                r.compressed_out_bytes += _units(m.group(2))
            r.deleted += len(re.findall(r"^deleted ", out, re.M))
            closed = []
            for p in self.d.glob("bulk-*.pcap*"):
                if p.name.endswith((".open", ".idx")):
                    continue
                try:
                    closed.append((p.stat().st_mtime, p))
                except FileNotFoundError:
                    continue  # deleted meanwhile
            extract = ("extract", "--dir", str(self.d), "--start", "2m ago", "-w", os.devnull)
            runs: list[tuple[str, ...]] = [(*extract, "tcp")]
            if closed:
                runs.append(("backdoor", "-r", str(max(closed)[1]), "--json"))
            for args in runs:
                code, _, err = self.job(args[0], *args)
                r.analysis_runs += 1
                if code not in (0, 3) or "Traceback" in err:
                    r.analysis_failures.append(f"bulk {args[0]} exit {code}: {err.strip()[-200:]}")


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
    loops = math.ceil(seconds * args.rate / NUMBERED) + 1
    result.load_start = os.getloadavg()
    replay_log = OUT / "tcpreplay.log"
    with open(replay_log, "wb") as log:  # a file: a pipe nobody reads could fill up
        replay = subprocess.Popen(
            pair.ns_cmd(
                pair.sender_ns, "tcpreplay", "--pps", str(args.rate), "--loop", str(loops),
                "--duration", str(seconds), "-i", pair.sender_dev, str(feed),
            ),
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    t0 = time.monotonic()
    cron = Cron(d, args.cron_seconds, args.max_disk, result, t0)
    cron.start()
    assert cap.proc is not None
    capture = psutil.Process(cap.proc.pid)
    tcpdump_proc = psutil.Process(tcpdump.pid)
    try:
        while replay.poll() is None:
            b_rss, a_rss, b_cpu = _capture_usage(capture.pid)
            t_rss, t_cpu = _usage(tcpdump_proc)
            done = time.monotonic() - t0
            result.samples.append(Sample(round(done, 1), b_rss, a_rss, b_cpu, t_rss, t_cpu))
            print(
                f"\r{done / 60:5.1f}/{args.minutes:g} min  capture RSS {b_rss / 1024:6.1f} MiB"
                f"  archiver {a_rss / 1024:5.1f} MiB  tcpdump {t_rss / 1024:5.1f} MiB  "
                f"compress runs {result.compress_runs}  deleted {result.deleted}",
                end="",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(SAMPLE_S)
        print(file=sys.stderr)
        replay.wait()
        result.sent = tcpreplay_sent(replay_log.read_text(errors="replace"))
        result.load_end = os.getloadavg()
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


def _quarters(values: list[int]) -> tuple[float, float]:
    """Peak (MiB) of the first and of the last quarter of a series."""
    q = max(len(values) // 4, 1)
    return max(values[:q]) / 1024, max(values[-q:]) / 1024


def report(result: Result) -> str:
    s = result.samples
    ratio = result.compressed_in_bytes / max(result.compressed_out_bytes, 1)
    lines = [
        f"soak: {result.minutes:g} min at {result.rate} packets/s, rotation every minute; "
        f"load average {result.load_start[0]:.1f} at the start, {result.load_end[0]:.1f} "
        "at the end (machine shared: figures are indicative)",
        f"  sent by tcpreplay:       {result.sent:,}",
        f"  bulk capture:            {result.bulk_captured:,} packets in {result.bulk_files} "
        f"files, {result.bulk_drops} kernel drops, loss {result.sent - result.bulk_captured:,}",
        f"  tcpdump -w (reference):  {result.tcpdump_captured:,} packets, "
        f"{result.tcpdump_drops} kernel drops, loss {result.sent - result.tcpdump_captured:,}",
        f"  bulk compress:           {result.compress_runs} runs ({result.compress_failures} "
        f"failed), {result.compressed} traces compressed "
        f"({result.compressed_in_bytes / 1e6:,.1f} MB -> "
        f"{result.compressed_out_bytes / 1e6:,.1f} MB, ratio {ratio:.2f}), "
        f"{result.deleted} deleted by retention",
        f"  analyses:                {result.analysis_runs} runs, "
        f"{len(result.analysis_failures)} failed",
    ]
    for f in result.analysis_failures[:5]:
        lines.append(f"    {f}")
    flat = True
    if len(s) >= 8:
        series = {
            "capture process": [x.bulk_rss_kib for x in s],
            "its archiver": [x.archiver_rss_kib for x in s],
            "tcpdump": [x.tcpdump_rss_kib for x in s],
        }
        lines.append("  RSS (MiB), first quarter peak -> last quarter peak, overall peak:")
        for name, values in series.items():
            first, last = _quarters(values)
            lines.append(
                f"    {name:<17} {first:6.1f} -> {last:6.1f}, peak {max(values) / 1024:.1f}"
            )
            if name != "tcpdump":
                flat = flat and last - first <= 8
        step = max(len(s) // 6, 1)  # about six points over the run, and the last one
        points = [*s[::step], s[-1]] if (len(s) - 1) % step else s[::step]
        lines.append(
            "  RSS over time (MiB, capture / archiver / tcpdump): "
            + ", ".join(
                f"{x.t / 60:.1f} min {x.bulk_rss_kib / 1024:.1f}/"
                f"{x.archiver_rss_kib / 1024:.1f}/{x.tcpdump_rss_kib / 1024:.1f}"
                for x in points
            )
        )
        mpkt = max(result.sent, 1) / 1e6
        b_cpu, t_cpu = s[-1].bulk_cpu_s, s[-1].tcpdump_cpu_s
        lines.append(
            f"  CPU per million packets: bulk {b_cpu / mpkt:.2f} s, tcpdump {t_cpu / mpkt:.2f} s "
            f"(ratio {b_cpu / max(t_cpu, 1e-9):.2f}x; bulk includes its archiver)"
        )
    jobs: dict[str, list[JobRun]] = {}
    for j in result.jobs:
        jobs.setdefault(j.job, []).append(j)
    if jobs:
        lines.append(
            "  cron jobs, peak RSS (MiB) first quarter -> last quarter of runs, longest run:"
        )
    for name, runs in jobs.items():
        first, last = _quarters([j.peak_rss_kib for j in runs])
        lines.append(
            f"    bulk {name:<9} {len(runs)} runs, {first:6.1f} -> {last:6.1f}, "
            f"{max(j.seconds for j in runs):.1f} s"
        )
        flat = flat and (len(runs) < 4 or last - first <= 8)
    lines.append(
        f"  memory flat (capture, archiver and each job: last - first quarter <= 8 MiB): "
        f"{'yes' if flat else 'NO'}"
    )
    lines.append(f"  zero loss: {'yes' if zero_loss(result) else 'NO'}")
    return "\n".join(lines)


def zero_loss(result: Result) -> bool:
    """Every packet sent is in a file bulk closed, and the kernel dropped none."""
    return result.sent == result.bulk_captured and result.bulk_drops == 0


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
    return 0 if zero_loss(result) else 1


if __name__ == "__main__":
    raise SystemExit(main())
