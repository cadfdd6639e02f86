"""Benchmark: `bulk compress` against `zstd -3 -T2` and `gzip -6` on the same trace.

The input (generated once under bench/out/, never committed) is made of the
real Ethernet packets of the bundled traces, shuffled, with increasing times;
by default 60% of them get random bytes after their first 54 bytes (headers
kept), like encrypted traffic: replaying 2 MB of real packets verbatim would
let zstd find every packet again inside its window and compress unrealistically
well.

Each tool runs on the same page-cached file, in the same run, alternately,
``--runs`` times; the best wall time and the CPU seconds of that run are
printed with the ratio bulk / reference (below 1.0: bulk is faster).

`bulk compress` is timed as the operator runs it: installed from a wheel of
this tree into bench/out/venv, as the sensor role installs it (not the
editable development install, whose import hook costs every start ~15 ms), on
a fresh archive directory holding a hard link to the input, so nothing is
copied: start-up, compression
into seekable frames with a frame index, verification of every frame as it is
written (read back, decompressed with its checksum, compared with the original
bytes), fsync, index read back, rename, delete. The zstd
reference is timed alone and followed by `sync FILE` (the fsync that crash
safety needs), both printed. A breakdown of bulk's phases comes from the
library in-process.

    python bench/compress.py                     # ~500 MB input
    python bench/compress.py --size-mb 2000 --runs 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import children_cpu, installed_bulk, installed_env  # noqa: E402

from bulk import native  # noqa: E402
from bulk.compress.codec import CompressSettings, check_index, compress_file  # noqa: E402
from bulk.trace import zstdframe  # noqa: E402
from bulk.trace.framing import split_frames  # noqa: E402
from tests.compress_data import make_pcap  # noqa: E402

OUT = ROOT / "bench" / "out"


def timed(
    cmd: list[str], stdout: Path | None = None, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Wall and CPU seconds of one command."""
    c0 = children_cpu()
    t0 = time.perf_counter()
    if stdout is None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    else:
        with open(stdout, "wb") as f:
            subprocess.run(cmd, check=True, stdout=f, env=env)
    return time.perf_counter() - t0, children_cpu() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--random-payload", type=float, default=0.6)
    ap.add_argument(
        "--small-files",
        type=int,
        default=40,
        metavar="N",
        help="also cut the input into N traces (on frame boundaries) and compress them "
        "as one archive, against zstd on the same files (0: skip)",
    )
    ap.add_argument(
        "--no-native",
        action="store_true",
        help="also time bulk compress (zstd) with BULK_NO_NATIVE=1: the Python record "
        "walks instead of the C accelerator bulk._recwalk",
    )
    args = ap.parse_args()
    for tool in ("zstd", "gzip", "sync"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    bulk = installed_bulk()
    OUT.mkdir(parents=True, exist_ok=True)
    src = OUT / f"compress-{args.size_mb}mb-{args.random_payload:g}.pcap"
    if not src.exists():
        print(f"generating {src} ...", flush=True)
        make_pcap(src, args.size_mb * 1_000_000, seed=1, random_payload=args.random_payload)
    size = src.stat().st_size
    src.read_bytes()  # into the page cache, for every tool alike
    arch = OUT / "compress-archive"
    zout, gout = OUT / "ref.pcap.zst", OUT / "ref.pcap.gz"

    best: dict[str, tuple[float, float, int]] = {}

    def note(name: str, wall: float, cpu: float, out_size: int) -> None:
        if name not in best or wall < best[name][0]:
            best[name] = (wall, cpu, out_size)

    def bulk_run(fmt: str, level: int, no_native: bool = False) -> None:
        shutil.rmtree(arch, ignore_errors=True)
        arch.mkdir()
        os.link(src, arch / "trace.pcap")
        env = dict(installed_env(), BULK_NO_NATIVE="1") if no_native else installed_env()
        wall, cpu = timed(
            [*bulk, "compress", "--dir", str(arch), "--format", fmt, "--level", str(level)],
            env=env,
        )
        out = arch / ("trace.pcap" + (".zst" if fmt == "zstd" else ".gz"))
        name = f"bulk compress --format {fmt} --level {level}"
        note(name + (" (BULK_NO_NATIVE=1)" if no_native else ""), wall, cpu, out.stat().st_size)

    small_dir = OUT / "compress-small"
    small: list[Path] = []
    if args.small_files:
        shutil.rmtree(small_dir, ignore_errors=True)
        small_dir.mkdir()
        with open(src, "rb") as f:
            splitter = split_frames(f, size // args.small_files + 1)
            header = b""
            for k, chunk in enumerate(splitter):
                if k == 0:
                    header = bytes(chunk.data[:24])
                    data = bytes(chunk.data)
                else:
                    data = header + chunk.data
                p = small_dir / f"t{k:03d}.pcap"
                p.write_bytes(data)
                small.append(p)

    def small_runs() -> None:
        outs = [Path(str(p) + ".zst") for p in small]
        for p in outs:
            p.unlink(missing_ok=True)
        wall, cpu = timed(["zstd", "-q", f"-{args.level}", "-T2", *map(str, small)])
        note(
            f"zstd -{args.level} -T2, {len(small)} files",
            wall,
            cpu,
            sum(p.stat().st_size for p in outs),
        )
        for p in outs:
            p.unlink()
        shutil.rmtree(arch, ignore_errors=True)
        arch.mkdir()
        for p in small:
            os.link(p, arch / p.name)
        wall, cpu = timed(
            [*bulk, "compress", "--dir", str(arch), "--level", str(args.level)], env=installed_env()
        )
        note(
            f"bulk compress, {len(small)} files",
            wall,
            cpu,
            sum(p.stat().st_size for p in arch.glob("*.zst")),
        )

    for run in range(args.runs):
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"run {run + 1}/{args.runs} (load average {load})", flush=True)
        wall, cpu = timed(["zstd", "-q", f"-{args.level}", "-T2", "-f", str(src), "-o", str(zout)])
        note(f"zstd -{args.level} -T2", wall, cpu, zout.stat().st_size)
        wall2, cpu2 = timed(["sync", str(zout)])
        note(f"zstd -{args.level} -T2 + sync FILE", wall + wall2, cpu + cpu2, zout.stat().st_size)
        bulk_run("zstd", args.level)
        if args.no_native:
            bulk_run("zstd", args.level, no_native=True)
        if small:
            small_runs()
        if run == 0:  # gzip is ten times slower: once is enough
            wall, cpu = timed(["gzip", "-6", "-c", str(src)], stdout=gout)
            note("gzip -6", wall, cpu, gout.stat().st_size)
            bulk_run("gzip", 6)

    # Phases of bulk, in-process (library calls, no start-up, no rename): the
    # frames alone, then with their verification, then fsync and the index check.
    settings = CompressSettings("zstd", args.level, threads=2)
    phases = OUT / "phases.pcap.zst"
    t0 = time.perf_counter()
    with open(src, "rb") as f:
        splitter = split_frames(f, settings.frame_size)
        for _chunk in splitter:
            pass
    walk = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(phases, "wb") as fw:
        compress_file(str(src), fw, settings)
    plain = time.perf_counter() - t0
    phases.unlink()
    t0 = time.perf_counter()
    with os.fdopen(os.open(phases, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), "wb") as fw:
        c = compress_file(str(src), fw, settings, verify_frames=True)
        fw.flush()
        t1 = time.perf_counter()
        os.fsync(fw.fileno())
    t2 = time.perf_counter()
    check_index(str(phases), c)
    t3 = time.perf_counter()
    os.unlink(phases)

    print(f"\ninput: {size / 1e6:.0f} MB, {c.packets} packets, {len(c.index.frames)} frames")
    walker = "C (bulk._recwalk)" if native.load("recwalk") else "Python (bulk._recwalk not in use)"
    print(f"record walks: {walker}; zstd: {zstdframe.engine()}")
    print(f"{'command':42} {'wall s':>7} {'cpu s':>7} {'MB/s':>7} {'ratio':>6}")
    for name, (wall, cpu, out_size) in best.items():
        print(f"{name:42} {wall:7.2f} {cpu:7.2f} {size / 1e6 / wall:7.0f} {size / out_size:6.3f}")
    zs = best[f"zstd -{args.level} -T2"][0]
    zsync = best[f"zstd -{args.level} -T2 + sync FILE"][0]
    bz = best[f"bulk compress --format zstd --level {args.level}"][0]
    gz = best["gzip -6"][0]
    bg = best["bulk compress --format gzip --level 6"][0]
    zcpu = best[f"zstd -{args.level} -T2"][1]
    bcpu = best[f"bulk compress --format zstd --level {args.level}"][1]
    print(f"\nbulk zstd / zstd -T2:          {bz / zs:.2f}x time, {bcpu / zcpu:.2f}x CPU")
    print(f"bulk zstd / (zstd -T2 + sync): {bz / zsync:.2f}x time")
    print(f"bulk gzip / gzip -6:           {bg / gz:.2f}x time")
    if args.no_native:
        py = best[f"bulk compress --format zstd --level {args.level} (BULK_NO_NATIVE=1)"]
        print(
            f"bulk zstd, Python walks / zstd -T2: {py[0] / zs:.2f}x time, {py[1] / zcpu:.2f}x CPU"
        )
    if small:
        zsm = best[f"zstd -{args.level} -T2, {len(small)} files"]
        bsm = best[f"bulk compress, {len(small)} files"]
        print(
            f"{len(small)} files: bulk / zstd -T2:   {bsm[0] / zsm[0]:.2f}x time, "
            f"{bsm[1] / zsm[1]:.2f}x CPU"
        )
    print(
        f"bulk phases (in-process): record walk alone {walk:.2f} s; frames+index {plain:.2f} s; "
        f"frames+index+verification {t1 - t0:.2f} s, fsync {t2 - t1:.2f} s, "
        f"index check {t3 - t2:.3f} s"
    )
    shutil.rmtree(arch, ignore_errors=True)
    shutil.rmtree(small_dir, ignore_errors=True)
    for p in (zout, gout):
        p.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
