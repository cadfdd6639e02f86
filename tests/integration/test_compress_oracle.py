"""`bulk compress` on every bundled real trace, checked with zstd, gzip, tcpdump and
capinfos (Wireshark's reader) as oracles.

One archive per format is compressed once (module fixture) with small frames,
so that even the small traces span several frames; each trace is then checked:
bytes, tcpdump's reading of the decompressed stream, `bulk info`, an
independent reader of the zstd seekable format (pyzstd), and frames decoded
alone against the packets of the original.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pyzstd

from bulk.errors import TraceError
from bulk.trace import open_trace
from bulk.trace.seekable import SeekableTrace
from tests.conftest import TRACES, require_tool, run_bulk

pytestmark = pytest.mark.integration

FRAME = "64K"  # the smallest allowed: most traces here are smaller than 4 MiB
DECOMPRESS = {"zstd": ["zstd", "-dc"], "gzip": ["gzip", "-dc"]}
SUFFIX = {"zstd": ".zst", "gzip": ".gz"}


@pytest.fixture(scope="module", params=["zstd", "gzip"])
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    fmt: str = request.param
    d = tmp_path_factory.mktemp(f"archive-{fmt}")
    for t in TRACES:
        shutil.copy2(t, d / t.name)
    before = {t.name: info(d / t.name) for t in TRACES}
    proc = run_bulk(
        "compress", "--dir", d, "--format", fmt, "--frame-size", FRAME, "--json", timeout=600
    )
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    return fmt, d, before, report


def info(path: Path) -> dict[str, Any]:
    proc = run_bulk("info", "--json", path)
    [entry] = json.loads(proc.stdout)["files"]
    return {k: v for k, v in entry.items() if k not in ("path", "compression")} | {
        "rc": proc.returncode
    }


def capinfos(path: Path) -> tuple[str, int]:
    """Packets, data size, first and last time as Wireshark's wiretap reads them."""
    exe = require_tool("capinfos")
    proc = subprocess.run(
        [exe, "-T", "-r", "-c", "-d", "-a", "-e", "-S", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip().split("\t", 1)[-1], proc.returncode


def tcpdump_text(data: bytes) -> tuple[bytes, int]:
    exe = require_tool("tcpdump")
    proc = subprocess.run(
        [exe, "-r", "-", "-nn", "-tt", "--nano", "-xx"],
        input=data,
        capture_output=True,
        check=False,
    )
    return proc.stdout, proc.returncode


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_compressed_trace_matches_original(archive: Any, trace: Path) -> None:
    fmt, d, before, report = archive
    comp = d / (trace.name + SUFFIX[fmt])
    assert comp.exists() and not (d / trace.name).exists()
    assert str(d / trace.name) in {c["src"] for c in report["compressed"]}
    original = trace.read_bytes()

    # The standard tool decompresses it to the original bytes.
    tool = require_tool(DECOMPRESS[fmt][0])
    out = subprocess.run([tool, *DECOMPRESS[fmt][1:], str(comp)], capture_output=True, check=True)
    assert out.stdout == original

    # `zstdcat f | tcpdump -r -` reads exactly what tcpdump reads from the original.
    assert tcpdump_text(out.stdout) == tcpdump_text(original)

    # Wireshark's reader (capinfos) opens a multi-member gzip file itself and sees
    # the same. (Not zstd: wiretap 4.0 loses track at the second zstd frame, and
    # later versions take the trailing skippable frames for data; see
    # docs/commands/compress.md.)
    if fmt == "gzip":
        assert capinfos(comp) == capinfos(trace)

    # `bulk info` is the same before and after, except the compression field.
    assert info(comp) == before[trace.name]

    # Times and mode are kept.
    assert comp.stat().st_mtime_ns == trace.stat().st_mtime_ns


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_frames_lead_to_the_right_packets(archive: Any, trace: Path) -> None:
    fmt, d, _before, _report = archive
    comp = d / (trace.name + SUFFIX[fmt])
    with open_trace(str(trace)) as r:
        packets = []
        try:
            packets.extend(r)
        except TraceError:
            pass  # truncated traces: the whole packets before the cut count
    original = trace.read_bytes()
    rng = random.Random(trace.name)
    with SeekableTrace.open(str(comp)) as st:
        assert st.compression == fmt
        assert st.packets == len(packets)
        assert sum(f.decomp_size for f in st.frames) == len(original)
        if trace.stat().st_size > 3 * 64 * 1024:
            assert len(st.frames) >= 3
        # Frames, decoded alone (behind the header), give the packets the index says.
        starts = [0]
        for f in st.frames:
            starts.append(starts[-1] + f.packets)
        picks = rng.sample(range(len(st.frames)), min(4, len(st.frames)))
        for k in picks:
            fr = st.frames[k]
            assert (
                st.read_frame(k) == original[fr.decomp_offset : fr.decomp_offset + fr.decomp_size]
            )
            if fr.packets == 0:
                continue
            got = list(st.packets_in(k, k + 1))
            assert got == packets[starts[k] : starts[k + 1]]
            stamps = [p.ts_ns for p in got]
            assert (fr.first_ts, fr.last_ts) == (stamps[0], stamps[-1])
            assert (fr.min_ts, fr.max_ts) == (min(stamps), max(stamps))
        # The time lookup never misses a packet.
        if packets:
            ts = rng.choice(packets).ts_ns
            hits = st.frames_between(ts, ts + 1)
            found = [p for k in hits for p in st.packets_in(k, k + 1) if p.ts_ns == ts]
            assert found == [p for p in packets if p.ts_ns == ts]


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_independent_readers_seek_by_the_index(archive: Any, trace: Path) -> None:
    """Another implementation decodes our frames: pyzstd's SeekableZstdFile (the
    zstd seekable format) seeks into the file; each gzip member, cut out at the
    offsets of the index, is a complete gzip file for Python's gzip module."""
    fmt, d, _before, _report = archive
    comp = d / (trace.name + SUFFIX[fmt])
    original = trace.read_bytes()
    rng = random.Random(trace.name)
    if fmt == "zstd":
        with pyzstd.SeekableZstdFile(str(comp), "r") as f:
            for _ in range(5):
                a = rng.randrange(len(original))
                n = rng.randrange(1, 5000)
                f.seek(a)
                assert f.read(n) == original[a : a + n]
            f.seek(0)
            assert f.read() == original
        return
    data = comp.read_bytes()
    with SeekableTrace.open(str(comp)) as st:
        frames = st.frames
    for fr in rng.sample(frames, min(5, len(frames))):
        member = data[fr.comp_offset : fr.comp_offset + fr.comp_size]
        assert (
            gzip.decompress(member)
            == original[fr.decomp_offset : fr.decomp_offset + fr.decomp_size]
        )
    assert gzip.decompress(data) == original
