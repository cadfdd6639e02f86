"""`bulk slice` of a plain pcap loads only what that path needs.

Start-up dominates a slice of a small window (docs/BENCHMARKS.md, "bulk
slice"): the trace layer (zstandard, pcapy, threads), the archive and its
catalogue (sqlite3), dataclasses (inspect, ast) and the other commands must not
be imported to cut an uncompressed pcap. The
modules a run leaves in ``sys.modules`` are the evidence; no timing here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.modules_probe import loaded_modules

DATA = Path(__file__).resolve().parents[1] / "data"

# Loaded only for compressed traces, streams, archives or other commands.
HEAVY = (
    "bulk.trace",
    "bulk.archive",
    "bulk.slicing.archive",
    "bulk.commands.extract",
    "bulk.commands.info",
    "zstandard",
    "pcapy",
    "sqlite3",
    "concurrent.futures",
    "ctypes",
    "dataclasses",  # with inspect, ast and dis: ~8 ms
    "datetime",  # needed by broken-down and ISO times only, not raw or +N ones
)


def _loaded(*argv: str) -> tuple[int, list[str]]:
    return loaded_modules(*argv)


@pytest.mark.parametrize("show_window", [False, True])
def test_plain_pcap_slice_imports_no_heavy_module(tmp_path: Path, show_window: bool) -> None:
    out = tmp_path / "out.pcap"
    trace = str(DATA / "dns_udp.pcap")
    argv = ["slice", "-d", "+0", "+1", trace] if show_window else ["slice", "-w", str(out), trace]
    status, modules = _loaded(*argv)
    assert status == 0
    if not show_window:
        assert out.stat().st_size > 24
    heavy = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []


# Not needed to cut a bulk-compressed zstd trace with the system libzstd either.
HEAVY_FOR_ZSTD = (
    "zstandard",  # imports platform: ~3 ms in all
    "concurrent.futures",  # with logging: ~5 ms
    "dataclasses",
    "sqlite3",
    "pcapy",
    "bulk.archive",
)


def test_bulk_compressed_zstd_slice_imports_no_heavy_module(tmp_path: Path) -> None:
    from bulk.compress.codec import CompressSettings, compress_file  # noqa: PLC0415
    from bulk.trace.zstdframe import FrameDecompressor  # noqa: PLC0415

    if not FrameDecompressor().available():
        pytest.skip("no system libzstd: python-zstandard decompresses")
    src = DATA / "dns_udp.pcap"
    comp = tmp_path / "t.pcap.zst"
    with open(comp, "wb") as f:
        compress_file(str(src), f, CompressSettings(frame_size=1024, threads=1))
    out = tmp_path / "out.pcap"
    status, modules = _loaded("slice", "-w", str(out), str(comp))
    assert status == 0
    assert out.read_bytes()[24:] == src.read_bytes()[24:]  # the whole trace, no window
    assert "bulk.trace.seekable" in modules  # the frame index was used
    heavy = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY_FOR_ZSTD)]
    assert heavy == []
