"""Random access into pcap files (bulk.slicing.pcapfile, zstdframes).

The truth is a plain sequential read of each file (tests/slicefiles.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulk.slicing.pcapfile import FileBytes, PcapFile, parse_pcap_header
from bulk.slicing.zstdframes import ZstdFrames
from tests.slicefiles import DATA, build_trace, read_pcap, zstd_frames

PCAPS = [
    p for p in sorted(DATA.glob("*.pcap")) if parse_pcap_header(p.read_bytes()[:24]) is not None
]


def _boundaries(path: Path) -> tuple[list[int], list[int], int]:
    """Offsets and ns times of every whole record, and the end of the last one."""
    header, recs = read_pcap(path)
    (magic,) = struct.unpack_from("<I", header)
    nano = magic == 0xA1B23C4D or struct.unpack_from(">I", header)[0] == 0xA1B23C4D
    offsets, times = [], []
    pos = 24
    for sec, frac, _w, data in recs:
        offsets.append(pos)
        times.append(sec * 1_000_000_000 + frac * (1 if nano else 1000))
        pos += 16 + len(data)
    return offsets, times, pos


@pytest.mark.parametrize("path", PCAPS, ids=[p.name for p in PCAPS])
def test_first_last_and_resync_on_every_real_trace(path: Path) -> None:
    offsets, times, end = _boundaries(path)
    pf = PcapFile(FileBytes(str(path)))
    try:
        assert pf.first is not None and pf.last is not None
        assert (pf.first.offset, pf.first.ts_ns) == (offsets[0], times[0])
        assert (pf.last.offset, pf.last.ts_ns) == (offsets[-1], times[-1])
        assert pf.data_end == end
        # From any byte offset, resynchronisation finds the next true boundary
        # (every offset of a small file; about 2000 spread over a larger one).
        true = iter([*offsets, None])
        nxt = next(true)
        for pos in range(25, end, max(1, end // 2000) | 1):
            while nxt is not None and nxt < pos:
                nxt = next(true)
            rec = pf.boundary_at_or_after(pos)
            assert (rec.offset if rec else None) == nxt, f"resync from {pos}"
    finally:
        pf.close()


@pytest.mark.parametrize("path", PCAPS, ids=[p.name for p in PCAPS])
def test_last_packet_of_a_cut_file(path: Path, tmp_path: Path) -> None:
    offsets, times, end = _boundaries(path)
    raw = path.read_bytes()
    for cut in sorted({end - 1, end - 15, end - 17, offsets[-1] + 3, (24 + end) // 2}):
        if cut <= offsets[0] + 16:
            continue
        part = tmp_path / "cut.pcap"
        part.write_bytes(raw[:cut])
        whole = [
            i
            for i, off in enumerate(offsets)
            if off + 16 <= cut and ((i + 1 < len(offsets) and offsets[i + 1] <= cut) or end <= cut)
        ]
        pf = PcapFile(FileBytes(str(part)))
        try:
            if not whole:
                assert pf.last is None or pf.last.offset == offsets[0]
                continue
            assert pf.last is not None
            assert pf.last.offset == offsets[whole[-1]], f"cut at {cut}"
            assert pf.last.ts_ns == times[whole[-1]]
        finally:
            pf.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.pcap"
    build_trace(path, 6000, mean_gap_us=20000, ties=0.1)
    return path


@given(target=st.integers(1795780800_000000000 - 10**9, 1795780800_000000000 + 250 * 10**9))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_find_time_equals_linear_search(big: Path, target: int) -> None:
    offsets, times, end = _boundaries(big)
    expected = next((off for off, t in zip(offsets, times, strict=True) if t >= target), end)
    src = FileBytes(str(big))
    pf = PcapFile(src)
    try:
        assert pf.find_time(target) == expected
        assert src.bytes_read < src.size // 4  # it searched, it did not read the file
    finally:
        pf.close()


@pytest.mark.parametrize("seek_table", [False, True], ids=["frame-walk", "seek-table"])
def test_zstd_frames_random_access(big: Path, tmp_path: Path, seek_table: bool) -> None:
    comp = tmp_path / "big.pcap.zst"
    nframes = zstd_frames(big, comp, 50_000, seek_table=seek_table)
    zf = ZstdFrames.open(str(comp))
    assert zf is not None and len(zf.frames) == nframes
    raw = big.read_bytes()
    assert zf.size == len(raw)
    for off, n in [(0, 24), (49_990, 30), (123_456, 200_000), (len(raw) - 5, 100), (7, 0)]:
        assert zf.read(off, n) == raw[off : off + n]
    # The same search over the decompressed view finds the same offsets.
    pf = PcapFile(zf)
    plain = PcapFile(FileBytes(str(big)))
    try:
        assert pf.last == plain.last
        before = zf.bytes_read
        assert pf.find_time(1795780800_000000000 + 60 * 10**9) == plain.find_time(
            1795780800_000000000 + 60 * 10**9
        )
        # One search decompresses a few frames, not the file.
        assert zf.bytes_read - before < comp.stat().st_size // 4
        for t in range(1795780800_000000000, 1795780800_000000000 + 130 * 10**9, 7 * 10**9):
            assert pf.find_time(t) == plain.find_time(t)
    finally:
        pf.close()
        plain.close()


def test_single_frame_zstd_is_not_seekable(big: Path, tmp_path: Path) -> None:
    comp = tmp_path / "one.pcap.zst"
    comp.write_bytes(zstandard.ZstdCompressor().compress(big.read_bytes()))
    assert ZstdFrames.open(str(comp)) is None
