"""Frames on record boundaries and the frame index: property tests on generated pcaps."""

from __future__ import annotations

import io
import random
import struct
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk.compress.codec import CompressSettings, compress_stream, verify
from bulk.errors import ArchiveError, TraceError
from bulk.trace import Packet, PcapWriter, seekable, zstdframe
from bulk.trace.framing import count_packets, split_frames
from bulk.trace.seekable import FrameIndex, SeekableTrace

packets_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2**32 - 1),  # seconds
        st.integers(min_value=0, max_value=999_999),  # microseconds
        st.binary(min_size=0, max_size=300),
    ),
    max_size=60,
)


def pcap_bytes(records: list[tuple[int, int, bytes]], big_endian: bool = False) -> bytes:
    buf = io.BytesIO()
    w = PcapWriter(buf, 1)
    for sec, usec, data in records:
        w.write(Packet(sec * 1_000_000_000 + usec * 1000, len(data) + 4, 1, data))
    raw = buf.getvalue()
    if not big_endian:
        return raw
    # Rewrite as a big-endian pcap, record by record.
    out = [struct.pack(">IHHiIII", *struct.unpack("<IHHiIII", raw[:24]))]
    pos = 24
    while pos < len(raw):
        sec, frac, cap, wire = struct.unpack_from("<IIII", raw, pos)
        out.append(struct.pack(">IIII", sec, frac, cap, wire) + raw[pos + 16 : pos + 16 + cap])
        pos += 16 + cap
    return b"".join(out)


@settings(max_examples=80, deadline=None)
@given(packets_strategy, st.integers(min_value=1, max_value=2000), st.booleans())
def test_frames_cover_the_input_on_record_boundaries(
    records: list[tuple[int, int, bytes]], frame_size: int, big: bool
) -> None:
    raw = pcap_bytes(records, big)
    splitter = split_frames(io.BytesIO(raw), frame_size)
    chunks = list(splitter)
    assert b"".join(c.data for c in chunks) == raw
    assert splitter.packets == len(records)
    assert splitter.damage is None
    k = 0
    for i, c in enumerate(chunks):
        n, stop = count_packets(splitter.layout, c.data, 24 if i == 0 else 0)
        assert (n, stop) == (c.stats.packets, len(c.data))
        stamps = [s * 1_000_000_000 + u * 1000 for s, u, _d in records[k : k + n]]
        k += n
        if n:
            assert c.stats.first_ts == stamps[0] and c.stats.last_ts == stamps[-1]
            assert (c.stats.min_ts, c.stats.max_ts) == (min(stamps), max(stamps))
        if i < len(chunks) - 1:
            assert len(c.data) >= frame_size  # only the last frame may be short
    assert k == len(records)


@settings(max_examples=25, deadline=None)
@given(packets_strategy, st.integers(min_value=0, max_value=40), st.sampled_from(["zstd", "gzip"]))
def test_compress_round_trip_with_a_cut_tail(
    records: list[tuple[int, int, bytes]], cut: int, fmt: str
) -> None:
    full = pcap_bytes(records)
    raw = full[: max(24, len(full) - cut)]
    boundaries = {24}
    for _s, _u, data in records:
        boundaries.add(max(boundaries) + 16 + len(data))
    out = io.BytesIO()
    c = compress_stream(io.BytesIO(raw), out, CompressSettings(fmt, 1, 200, 2))
    assert c.size == len(raw)
    assert (c.damage is None) == (len(raw) in boundaries)
    with tempfile.NamedTemporaryFile(suffix=".pcap.zst") as f:
        f.write(out.getvalue())
        f.flush()
        verify(f.name, io.BytesIO(raw), c, deep=True)
        with SeekableTrace.open(f.name) as st_:
            assert st_.read_frames(0, len(st_.frames)) == raw
            assert st_.index == FrameIndex.decode(st_.index.encode())


def test_verify_catches_a_flipped_byte(tmp_path: Path) -> None:
    raw = pcap_bytes([(1, 2, bytes(range(200)))] * 50)
    out = io.BytesIO()
    c = compress_stream(io.BytesIO(raw), out, CompressSettings("gzip", 1, 1000, 1))
    data = bytearray(out.getvalue())
    data[200] ^= 0x40
    path = str(tmp_path / "x.pcap.gz")
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ArchiveError):
        verify(path, io.BytesIO(raw), c)


def test_not_a_trace_is_refused() -> None:
    with pytest.raises(TraceError):
        split_frames(io.BytesIO(b"hello world, this is not a pcap"))


def test_plain_zstd_has_no_index(tmp_path: Path) -> None:
    path = str(tmp_path / "plain.pcap.zst")
    with open(path, "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(pcap_bytes([(1, 1, b"x" * 60)])))
    with pytest.raises(TraceError, match="no frame index"):
        SeekableTrace.open(path)


@pytest.mark.parametrize("engine", ["system", "bundled"])
def test_frame_compressor_engines(engine: str) -> None:
    fc = zstdframe.FrameCompressor(3)
    if engine == "bundled":
        fc._lib = None
    elif fc._lib is None:
        pytest.skip("no system libzstd")
    data = pcap_bytes([(1, 2, bytes(range(256)) * 3)] * 40)
    frame = fc.compress(data)
    fc.close()
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == len(data) and params.has_checksum
    assert zstandard.ZstdDecompressor().decompress(frame) == data
    # A flipped bit in the payload is caught by the frame's own checksum.
    bad = bytearray(frame)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(bytes(bad))


def _compressed_trace(tmp_path: Path, frame_size: int = 300) -> tuple[str, bytes]:
    raw = pcap_bytes([(i, i * 7, bytes(range(i % 200)) * 2) for i in range(120)])
    path = str(tmp_path / "t.pcap.zst")
    with open(path, "wb") as f:
        compress_stream(io.BytesIO(raw), f, CompressSettings("zstd", 3, frame_size, 1))
    return path, raw


def _reusable(st_: SeekableTrace) -> None:
    if not st_.can_reuse_buffers():
        pytest.skip("no system libzstd")


@pytest.mark.parametrize("mapped", [True, False])
@pytest.mark.parametrize("threads", [None, 1, 2, 3])
def test_frames_reused_are_the_frames(
    tmp_path: Path, threads: int | None, mapped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a mapping of the file, or read into a buffer where it cannot be mapped."""
    from bulk.trace import seekable  # noqa: PLC0415

    if not mapped:
        monkeypatch.setattr(seekable, "MAP_MAX", 100)  # more than that: read instead
    path, _raw = _compressed_trace(tmp_path)
    with SeekableTrace.open(path) as st_:
        _reusable(st_)
        n = len(st_.frames)
        whole, _base = st_._map(range(n))
        assert (whole is not None) == mapped
        if whole is not None:
            whole.close()
        assert n > 8
        for ks in (list(range(n)), [1], [0, 2, 3, 7], list(range(3, n - 1))):
            got = [(k, bytes(view)) for k, view in st_.frames_reused(ks, threads)]
            assert got == [(k, st_.read_frame(k)) for k in ks]


@pytest.mark.parametrize("mapped", [True, False])
def test_frames_reused_corrupt_frame_and_early_stop(
    tmp_path: Path, mapped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading  # noqa: PLC0415

    if not mapped:
        monkeypatch.setattr(SeekableTrace, "_map", lambda _self, _ks: (None, 0))
    path, _raw = _compressed_trace(tmp_path)
    before = threading.active_count()
    with SeekableTrace.open(path) as st_:
        _reusable(st_)
        fr = st_.frames[4]
        ks = list(range(len(st_.frames)))
        # Stopped early: the threads end with the iterator.
        it = st_.frames_reused(ks)
        assert next(it)[0] == 0
        it.close()
        assert threading.active_count() == before
    data = bytearray(Path(path).read_bytes())
    data[fr.comp_offset + fr.comp_size // 2] ^= 0x10
    Path(path).write_bytes(bytes(data))
    with SeekableTrace.open(path) as st_:
        seen = []
        with pytest.raises(TraceError, match="frame 4 corrupt"):
            for k, _view in st_.frames_reused(ks):
                seen.append(k)
        assert seen == [0, 1, 2, 3]
    assert threading.active_count() == before


@pytest.mark.parametrize("engine", ["system", "bundled"])
def test_zstd_head_is_the_start_of_the_frame(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if engine == "bundled":
        monkeypatch.setattr(zstdframe, "_system_lib", lambda: None)
    elif zstdframe._system_lib() is None:
        pytest.skip("no system libzstd")
    rnd = random.Random(5)
    data = rnd.randbytes(3000) + bytes(200_000) + rnd.randbytes(300_000)
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    for n in (0, 1, 24, 3000, 250_000, len(data), len(data) + 7):
        assert zstdframe.head(frame, n) == data[:n]
    for cut in (0, 5, 100, len(frame) // 2):
        assert data.startswith(zstdframe.head(frame[:cut], 24))  # whatever it could decode
    with pytest.raises(ValueError):
        zstdframe.head(b"not a zstd frame at all", 24)


def test_decode_threads_leave_a_core_to_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    from bulk.trace import seekable  # noqa: PLC0415

    for cores, threads in ((1, 1), (2, 1), (3, 2), (64, 2)):
        monkeypatch.setattr(seekable.os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert seekable.decode_threads() == threads


def test_writers_sharing_workers_when_one_stops(tmp_path: Path) -> None:
    """Two writers on one set of Workers (bulk compress writes two files at once):
    one stopped midway (an error in its file) cancels and waits for its own jobs
    only; the other goes on with the same threads and its file reads back whole."""
    raw_a = pcap_bytes([(1, i, bytes([i % 256]) * 300) for i in range(300)])
    raw_b = pcap_bytes([(2, i, bytes(range(200 + i % 50))) for i in range(300)])
    a_path, b_path = tmp_path / "a.pcap.zst", tmp_path / "b.pcap.zst"
    with seekable.Workers(2, verify=True) as workers:
        with open(a_path, "w+b") as fa, open(b_path, "w+b") as fb:
            wa = seekable.SeekableWriter(fa, "zstd", 3, verify=True, workers=workers)
            wb = seekable.SeekableWriter(fb, "zstd", 3, verify=True, workers=workers)
            frames_a = iter(split_frames(io.BytesIO(raw_a), 4000))
            sb = split_frames(io.BytesIO(raw_b), 4000)
            for k, chunk in enumerate(sb):
                wb.add(chunk.data, chunk.stats)
                if k < 6:
                    a = next(frames_a)
                    wa.add(a.data, a.stats)
                elif k == 6:
                    wa.abort()
            assert k > 12
            index = wb.finish(sb.layout, False)
        assert not workers.compress._shutdown  # the stopped writer left them running
    with SeekableTrace.open(str(b_path)) as st_:
        assert st_.index == index
        assert st_.read_frames(0, len(st_.frames)) == raw_b


def test_shared_workers_without_a_check_thread_cannot_verify() -> None:
    with seekable.Workers(1) as workers, pytest.raises(ValueError, match="check thread"):
        seekable.SeekableWriter(io.BytesIO(), verify=True, workers=workers)
