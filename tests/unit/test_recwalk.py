"""bulk._recwalk (csrc/recwalk.c) against its Python twins in bulk.trace.framing and
bulk.trace.seekable: the same frames, packet counts, times and damage reports on
every bundled trace, on damaged copies of them (truncated, bogus captured
lengths) and on generated input; and the verification's decompression."""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import os
import random
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk import native
from bulk.compress import codec
from bulk.errors import ArchiveError, TraceError
from bulk.slicing import pcapfile
from bulk.trace import framing, seekable, zstdframe
from bulk.trace.reader import MAX_SNAPLEN
from tests.conftest import DATA

# The corpus bundled in the repository (tests/data: ../shared/traces with its
# manifest), so that a clone on its own has it.
TRACES = DATA
TRACE_FILES = sorted(p for p in TRACES.glob("*") if p.suffix in (".pcap", ".pcapng"))
assert TRACE_FILES, f"no traces in {TRACES}"
FRAME_SIZES = (1, 700, 4096, 1 << 20)


@pytest.fixture(scope="module")
def c_walk() -> Any:
    """bulk._recwalk, required where dev.sh requires the C accelerators."""
    os.environ.pop("BULK_NO_NATIVE", None)
    mod = native.load("recwalk")
    if mod is None:
        if os.environ.get("BULK_REQUIRE_NATIVE") == "1":
            pytest.fail("bulk._recwalk was not built")
        pytest.skip("bulk._recwalk not built")
    return mod


def split_all(raw: bytes, frame_size: int, no_native: bool) -> Any:
    """Everything split_frames says about ``raw``, with the C walk or without it."""
    old = os.environ.get("BULK_NO_NATIVE")
    os.environ["BULK_NO_NATIVE"] = "1" if no_native else ""
    try:
        try:
            sp = framing.split_frames(io.BytesIO(raw), frame_size)
            chunks = [(bytes(c.data), c.stats) for c in sp]
        except TraceError as exc:
            return ("TraceError", str(exc))
        counts = [
            framing.count_packets(sp.layout, data, sp.layout.header_len if k == 0 else 0)
            for k, (data, _st) in enumerate(chunks)
        ]
        return chunks, counts, sp.packets, sp.size, sp.damage, sp.layout
    finally:
        if old is None:
            os.environ.pop("BULK_NO_NATIVE", None)
        else:
            os.environ["BULK_NO_NATIVE"] = old


def assert_twins_agree(raw: bytes, frame_size: int) -> Any:
    c_result = split_all(raw, frame_size, no_native=False)
    py_result = split_all(raw, frame_size, no_native=True)
    assert c_result == py_result
    return c_result


def records_of(raw: bytes) -> Iterator[int]:
    """Offsets of the record headers of a classic pcap (whole records only)."""
    endian = "<" if raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    pos = 24
    while pos + 16 <= len(raw):
        (caplen,) = struct.unpack_from(endian + "I", raw, pos + 8)
        if pos + 16 + caplen > len(raw):
            return
        yield pos
        pos += 16 + caplen


def is_classic_pcap(raw: bytes) -> bool:
    return raw[:4] in (
        b"\xd4\xc3\xb2\xa1",
        b"\xa1\xb2\xc3\xd4",
        b"\x4d\x3c\xb2\xa1",
        b"\xa1\xb2\x3c\x4d",
    )


def test_the_c_walk_is_the_one_in_use(c_walk: Any) -> None:
    """Without BULK_NO_NATIVE the splitter walks in C (else the comparisons below
    would compare the twin with itself)."""
    assert seekable.native_same_bytes() is c_walk.same_bytes
    assert framing._walker() is c_walk


def test_no_native_uses_the_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULK_NO_NATIVE", "1")
    assert framing._walker().walk_pcap is framing.walk_pcap
    assert seekable.native_same_bytes() is seekable.same_bytes


@pytest.mark.parametrize("path", TRACE_FILES, ids=lambda p: p.name)
def test_bundled_traces(path: Path, c_walk: Any) -> None:
    """Every bundled trace: C and Python cut the same frames with the same stats and
    counts; every frame walks whole; the packets are tcpdump's count."""
    raw = path.read_bytes()
    manifest = {e["file"]: e for e in json.loads((TRACES / "manifest.json").read_text())}
    for size in FRAME_SIZES:
        chunks, counts, packets, total, damage, _layout = assert_twins_agree(raw, size)
        assert b"".join(d for d, _ in chunks) == raw and total == len(raw)
        assert packets == manifest[path.name]["packets"]  # tcpdump -r FILE | wc -l
        assert [n for n, _ in counts] == [s.packets for _, s in chunks]
        if damage is None:
            assert [stop for _, stop in counts] == [len(d) for d, _ in chunks]


def damaged_copies(raw: bytes, rnd: random.Random) -> Iterator[bytes]:
    """Truncated copies, and copies with one record's captured length made bogus
    (too large for any record, too large for what follows, or off by a few)."""
    for _ in range(6):
        yield raw[: rnd.randrange(len(raw) + 1)]
    offsets = list(records_of(raw)) if is_classic_pcap(raw) else []
    endian = "<" if raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    for pos in rnd.sample(offsets, min(6, len(offsets))):
        for caplen in (0xFFFFFFFF, MAX_SNAPLEN + 1, len(raw), rnd.randrange(0, 2000)):
            bad = bytearray(raw)
            struct.pack_into(endian + "I", bad, pos + 8, caplen)
            yield bytes(bad)
    for _ in range(4):  # random bytes anywhere after the file header
        bad = bytearray(raw)
        at = rnd.randrange(24, max(25, len(bad) - 4))
        bad[at : at + 4] = rnd.randbytes(4)
        yield bytes(bad)


@pytest.mark.parametrize("path", TRACE_FILES, ids=lambda p: p.name)
def test_damaged_copies_of_bundled_traces(path: Path, c_walk: Any) -> None:
    raw = path.read_bytes()
    rnd = random.Random(path.name)
    damaged = 0
    for bad in damaged_copies(raw, rnd):
        for size in (700, 1 << 20):
            result = assert_twins_agree(bad, size)
            if result[0] != "TraceError":
                damaged += result[4] is not None
                assert b"".join(d for d, _ in result[0]) == bad
    assert damaged  # the copies did exercise the damage paths


def u32_often_small() -> st.SearchStrategy[int]:
    """Any 32-bit value, often a small one (so times tie or differ by one tick)."""
    return st.integers(min_value=0, max_value=3) | st.integers(min_value=0, max_value=2**32 - 1)


record = st.tuples(
    u32_often_small(),  # seconds
    u32_often_small(),  # fraction, even out of range
    st.binary(max_size=200),
)


def build_pcap(records: list[tuple[int, int, bytes]], big: bool, nano: bool, snaplen: int) -> bytes:
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, 1)]
    for sec, frac, data in records:
        out.append(struct.pack(e + "IIII", sec, frac, len(data), len(data)) + data)
    return b"".join(out)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(record, max_size=40),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0, 65535, MAX_SNAPLEN, 2**32 - 1]),
    st.sampled_from([1 << 20, 100, 1]) | st.integers(min_value=1, max_value=3000),
    st.data(),
)
def test_generated_traces(
    records: list[tuple[int, int, bytes]],
    big: bool,
    nano: bool,
    snaplen: int,
    frame_size: int,
    data: st.DataObject,
) -> None:
    """Generated pcaps (either byte order, µs or ns, any times), whole or damaged."""
    if native.load("recwalk") is None:
        pytest.skip("bulk._recwalk not built")
    raw = build_pcap(records, big, nano, snaplen)
    _chunks, _counts, packets, _total, damage, _layout = assert_twins_agree(raw, frame_size)
    assert packets == len(records) and damage is None
    (whole,), _counts, _packets, _total, _damage, _layout = assert_twins_agree(raw, 1 << 20)
    if records:  # one frame: its times are all the records' (the Python twin's oracle)
        per_s, mult = (10**9, 1) if nano else (10**6, 1000)
        times = [(sec * per_s + frac) * mult for sec, frac, _ in records]
        assert whole[1] == (len(times), times[0], times[-1], min(times), max(times))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    assert_twins_agree(raw[:cut], frame_size)
    offsets = list(records_of(raw))
    if offsets:
        pos = data.draw(st.sampled_from(offsets))
        caplen = data.draw(st.integers(min_value=0, max_value=2**32 - 1))
        bad = bytearray(raw)
        struct.pack_into((">" if big else "<") + "I", bad, pos + 8, caplen)
        assert_twins_agree(bytes(bad), frame_size)


@pytest.mark.parametrize("nano", [False, True])
def test_times_that_tie_or_step_by_one_tick(nano: bool, c_walk: Any) -> None:
    """Times a tick apart or equal, up and down (the minimum and maximum updates):
    C, Python and the times computed here agree, frame by frame."""
    rnd = random.Random(nano)
    sec, frac = 5, 10
    records = []
    for _ in range(400):
        frac = max(0, frac + rnd.choice((-1, 0, 1, 1)))
        records.append((sec + rnd.choice((0, 0, 0, 1)), frac, b"x" * rnd.randrange(8)))
    raw = build_pcap(records, False, nano, 0)
    per_s, mult = (10**9, 1) if nano else (10**6, 1000)
    for size in (100, 1000, 1 << 20):
        chunks, *_ = assert_twins_agree(raw, size)
        k = 0
        for _data, stats in chunks:
            times = [(s * per_s + f) * mult for s, f, _ in records[k : k + stats.packets]]
            assert stats == (len(times), times[0], times[-1], min(times), max(times))
            k += stats.packets
        assert k == len(records)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=600),
    st.integers(min_value=0, max_value=700),
    st.integers(min_value=-5, max_value=700),
    st.sampled_from([0, 16, 100, MAX_SNAPLEN, 2**32 - 1]),
    st.booleans(),
    st.booleans(),
)
def test_walk_functions_on_any_bytes(
    buf: bytes, pos: int, cut: int, maxcap: int, swapped: bool, nano: bool
) -> None:
    """The functions themselves, on arbitrary bytes and positions (also past the end)."""
    c = native.load("recwalk")
    if c is None:
        pytest.skip("bulk._recwalk not built")
    assert c.walk_pcap(buf, pos, cut, maxcap, swapped, nano) == framing.walk_pcap(
        buf, pos, cut, maxcap, swapped, nano
    )
    assert c.count_pcap(buf, pos, maxcap, swapped) == framing.count_pcap(buf, pos, maxcap, swapped)
    assert c.count_pcapng(buf, pos, swapped) == framing.count_pcapng(buf, pos, swapped)
    view = memoryview(bytearray(buf))
    assert c.walk_pcap(view, pos, cut, maxcap, swapped, nano) == framing.walk_pcap(
        buf, pos, cut, maxcap, swapped, nano
    )


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=600),
    st.integers(min_value=0, max_value=700),
    st.sampled_from([0, 16, 100, MAX_SNAPLEN, 2**32 - 1]),
    st.booleans(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_window_spans_on_any_bytes(
    buf: bytes, pos: int, maxcap: int, swapped: bool, nano: bool, start: int, end: int
) -> None:
    c = native.load("recwalk")
    if c is None:
        pytest.skip("bulk._recwalk not built")
    args = (pos, maxcap, swapped, nano, start, end)
    assert c.window_spans(buf, *args) == pcapfile._window_spans(buf, *args)
    assert c.window_spans(memoryview(bytearray(buf)), *args) == pcapfile._window_spans(buf, *args)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(record, max_size=40),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_window_spans_hold_the_records_inside(
    records: list[tuple[int, int, bytes]], big: bool, nano: bool, data: st.DataObject
) -> None:
    """window_spans (C and twin) cover exactly the records whose times are inside,
    in maximal runs, as a walk with iter_buffer finds them; a cut or damaged
    tail stops both where iter_buffer stops."""
    if native.load("recwalk") is None:
        pytest.skip("bulk._recwalk not built")
    raw = build_pcap(records, big, nano, 0)
    fmt = pcapfile.parse_pcap_header(raw)
    assert fmt is not None
    cut = data.draw(st.integers(min_value=24, max_value=len(raw)))
    buf = raw[:cut]
    bounds = [0, 1, 2**32 - 1, 10**9, *((s * 10**9 + f) for s, f, _ in records)]
    start = data.draw(st.sampled_from(bounds) | st.none())
    end = data.draw(st.sampled_from(bounds) | st.none())
    walked = list(pcapfile.iter_buffer(buf, 24, fmt))
    runs: list[tuple[int, int]] = []
    for off, ts, caplen, _w in walked:
        if (start is None or ts >= start) and (end is None or ts <= end):
            rec_end = off + 16 + caplen
            if runs and runs[-1][1] == off:
                runs[-1] = (runs[-1][0], rec_end)
            else:
                runs.append((off, rec_end))
        elif runs and runs[-1][1] == off:
            runs.append((-1, -1))  # a record outside closes the run
    runs = [r for r in runs if r[0] >= 0]
    stop = walked[-1][0] + 16 + walked[-1][2] if walked else 24
    for no_native in ("", "1"):
        os.environ["BULK_NO_NATIVE"] = no_native
        try:
            assert pcapfile.window_spans(buf, 24, fmt, start, end) == (runs, stop)
        finally:
            os.environ.pop("BULK_NO_NATIVE", None)


block = st.tuples(
    st.sampled_from([1, 2, 3, 5, 6, 0x0A0D0D0A, 0xDEAD]),
    st.binary(max_size=40),
    st.sampled_from(["ok", "short", "odd", "huge"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(block, max_size=12), st.booleans(), st.integers(min_value=0, max_value=40))
def test_count_pcapng_on_generated_blocks(
    blocks: list[tuple[int, bytes, str]], big: bool, pos: int
) -> None:
    """pcapng block walks: packet blocks counted, bad lengths stop both twins alike,
    a section header switches the byte order."""
    c = native.load("recwalk")
    if c is None:
        pytest.skip("bulk._recwalk not built")
    e = ">" if big else "<"
    parts = []
    for btype, body, kind in blocks:
        body = body + bytes(-len(body) % 4)
        if btype == 0x0A0D0D0A:
            body = struct.pack(e + "I", 0x1A2B3C4D) + body
        blen = 12 + len(body)
        blen = {"ok": blen, "short": 8, "odd": blen + 2, "huge": 17 << 20}[kind]
        parts.append(struct.pack(e + "II", btype, blen) + body + struct.pack(e + "I", blen))
    buf = b"".join(parts)
    assert c.count_pcapng(buf, pos, big) == framing.count_pcapng(buf, pos, big)


def test_a_hostile_snaplen_costs_no_more_memory_than_the_file(c_walk: Any) -> None:
    """A file header's snaplen of 4 GiB makes the walk's margin 4 GiB: the buffer
    must still grow only with the bytes read (Python's allocations, traced)."""
    raw = build_pcap([(1, 2, bytes(100))] * 50, False, False, 2**32 - 1)
    for no_native in (False, True):
        tracemalloc.start()
        try:
            chunks, *_ = split_all(raw, framing.DEFAULT_FRAME_SIZE, no_native)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert b"".join(d for d, _ in chunks) == raw
        assert peak < 4 * framing.DEFAULT_FRAME_SIZE


def test_new_buffer_twins(c_walk: Any) -> None:
    """The C new_buffer (not zeroed) and its twin give a bytearray of the size asked,
    that takes writes and cuts as any does; both refuse a negative size."""
    for new in (c_walk.new_buffer, framing.new_buffer):
        for n in (0, 1, 4096, 1 << 20):
            buf = new(n)
            assert type(buf) is bytearray and len(buf) == n
            buf[: min(n, 3)] = b"abc"[: min(n, 3)]
            del buf[min(n, 3) :]
            assert buf == b"abc"[: min(n, 3)]
        with pytest.raises(ValueError):
            new(-1)


def test_fill_keeps_only_bytes_read(c_walk: Any) -> None:
    """_fill with either buffer maker holds exactly the bytes given and read (a
    short file: the unset rest is cut off, never seen)."""
    rnd = random.Random(3)
    for new in (c_walk.new_buffer, framing.new_buffer):
        for total in (0, 10, 5000, 3 << 20):
            raw = rnd.randbytes(total)
            head = bytearray(b"hd")
            buf, eof = framing._fill(io.BytesIO(raw), head, 2 + (4 << 20), 1 << 20, new)
            assert bytes(buf) == b"hd" + raw and eof


def test_c_walk_rejects_impossible_arguments(c_walk: Any) -> None:
    with pytest.raises(ValueError, match="pos"):
        c_walk.walk_pcap(b"", -1, 10, 100, False, False)
    with pytest.raises(ValueError, match="maxcap"):
        c_walk.count_pcap(b"", 0, 2**32, False)
    with pytest.raises(TypeError):
        c_walk.count_pcap("text", 0, 100, False)


# -- verification: decompress into a reused buffer, compare without copying --------------


def test_same_bytes_twins(c_walk: Any) -> None:
    rnd = random.Random(7)
    for n in (0, 1, 4095, 1 << 16):
        a = rnd.randbytes(n)
        variants: list[bytes | bytearray] = [a, bytearray(a), a + b"x", a[:-1]]
        if n:
            flipped = bytearray(a)
            flipped[rnd.randrange(n)] ^= 0x40
            variants.append(bytes(flipped))
        for b in variants:
            assert c_walk.same_bytes(a, b) == seekable.same_bytes(a, b) == (bytes(b) == a)


@pytest.fixture()
def decompressor() -> Iterator[zstdframe.FrameDecompressor]:
    d = zstdframe.FrameDecompressor()
    if not d.available():
        pytest.skip("no system libzstd")
    yield d
    d.close()


def frame_of(data: bytes) -> bytes:
    fc = zstdframe.FrameCompressor(3)
    try:
        return fc.compress(data)
    finally:
        fc.close()


@pytest.mark.parametrize("path", TRACE_FILES[:8], ids=lambda p: p.name)
def test_frame_decompressor_agrees_with_python_zstandard(
    path: Path, decompressor: zstdframe.FrameDecompressor
) -> None:
    """The system-libzstd check says equal exactly when python-zstandard's
    decompression (the oracle) gives the original bytes."""
    raw = path.read_bytes()
    frame = frame_of(raw)
    assert zstandard.ZstdDecompressor().decompress(frame) == raw
    c = native.load("recwalk")
    for same in [seekable.same_bytes] + ([] if c is None else [c.same_bytes]):
        assert decompressor.equal(frame, raw, same)
        if raw:
            other = bytearray(raw)
            other[len(other) // 2] ^= 1
            assert not decompressor.equal(frame, bytes(other), same)


def test_frame_decompressor_refuses_what_python_zstandard_refuses(
    decompressor: zstdframe.FrameDecompressor,
) -> None:
    raw = (TRACE_FILES[0]).read_bytes()
    frame = frame_of(raw)
    bad = bytearray(frame)
    bad[len(bad) // 2] ^= 0x10  # payload: the frame's checksum catches it
    for comp, size in (
        (bytes(bad), len(raw)),  # corrupt
        (frame, len(raw) - 1),  # holds more than the index says
        (frame, len(raw) + 1),  # holds less
        (frame[:-10], len(raw)),  # cut short
        (b"not a zstd frame at all", len(raw)),
    ):
        with pytest.raises(ValueError):
            seekable.decompress_frame("zstd", comp, size)
        with pytest.raises(ValueError):
            decompressor.equal(comp, bytes(size), seekable.same_bytes)


@pytest.mark.parametrize("engine", ["system", "python-zstandard"])
def test_writer_catches_a_frame_that_reads_back_wrong(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-frame verification (both decompression engines) fails on a frame whose
    bytes on disk differ from what was compressed."""
    if engine == "python-zstandard":
        monkeypatch.setattr(zstdframe.FrameDecompressor, "available", lambda self: False)
    elif not zstdframe.FrameDecompressor().available():
        pytest.skip("no system libzstd")
    raw = (TRACES / "zeek-smtp.pcap").read_bytes()

    class Corrupting(io.FileIO):
        """Every write reaches the file with one bit flipped on disk (whatever reads
        it back, ``pread`` or a mapping, sees the flip; the writer's copy does not)."""

        def write(self, b: Any) -> int:
            pos = self.tell()
            n = super().write(b)
            os.pwrite(self.fileno(), bytes([b[n // 2] ^ 0x01]), pos + n // 2)
            return n

    with Corrupting(tmp_path / "out.zst", "w+") as out:
        writer = seekable.SeekableWriter(out, "zstd", 3, 2, verify=True)
        sp = framing.split_frames(io.BytesIO(raw), 4096)
        with pytest.raises(seekable.FrameMismatch):
            for chunk in sp:
                writer.add(chunk.data, chunk.stats)
            writer.finish(sp.layout, False)
        writer.abort()


ENGINES = ["system", "python-zstandard"]


def use_engine(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if engine == "python-zstandard":
        monkeypatch.setattr(zstdframe.FrameDecompressor, "available", lambda self: False)
    elif not zstdframe.FrameDecompressor().available():
        pytest.skip("no system libzstd")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "name", ["zeek-smtp.pcap", "irc-dcc-send.pcapng", "zeek-smtp-cut-mid-packet.pcap"]
)
def test_verify_of_a_written_file(
    engine: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """codec.verify (the sweep's check, deep) passes on the file as written, with
    either decompression engine, and fails on a flipped byte in the compressed file,
    on an original that differs, is shorter or is longer."""
    use_engine(engine, monkeypatch)
    raw = (TRACES / name).read_bytes()
    path = str(tmp_path / "t.pcap.zst")
    with open(path, "wb") as out:
        c = codec.compress_stream(io.BytesIO(raw), out, codec.CompressSettings("zstd", 3, 4096))
    assert len(c.index.frames) > 3
    codec.verify(path, io.BytesIO(raw), c, deep=True)
    other = bytearray(raw)
    other[len(raw) // 2] ^= 1
    for original in (bytes(other), raw[:-1], raw + b"\0"):
        with pytest.raises(ArchiveError):
            codec.verify(path, io.BytesIO(original), c, deep=True)
    comp = bytearray(Path(path).read_bytes())
    comp[c.index.frames[2].comp_offset + c.index.frames[2].comp_size // 2] ^= 0x08
    Path(path).write_bytes(bytes(comp))
    with pytest.raises(ArchiveError, match="frame 2"):
        codec.verify(path, io.BytesIO(raw), c, deep=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_deep_verify_walks_every_frame(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With deep, a frame whose records do not walk to the index's packet count
    fails verification, with either engine (the walk is the one under test)."""
    use_engine(engine, monkeypatch)
    raw = (TRACES / "zeek-smtp.pcap").read_bytes()
    path = str(tmp_path / "t.pcap.zst")
    with open(path, "wb") as out:
        c = codec.compress_stream(io.BytesIO(raw), out, codec.CompressSettings("zstd", 3, 4096))
    codec.verify(path, io.BytesIO(raw), None, deep=True)
    fr = c.index.frames[2]
    frame2 = raw[fr.decomp_offset : fr.decomp_offset + fr.decomp_size]
    walked = []
    real = framing.count_packets

    def off_by_one(layout: Any, data: Any, pos: int = 0) -> tuple[int, int]:
        n, stop = real(layout, data, pos)
        walked.append(n)
        return (n + 1 if bytes(data) == frame2 else n), stop

    monkeypatch.setattr(codec, "count_packets", off_by_one)
    with pytest.raises(ArchiveError, match="frame 2 walks to"):
        codec.verify(path, io.BytesIO(raw), None, deep=True)
    assert walked


def test_system_libzstd_by_soname_else_find_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """The system libzstd is loaded by its soname; where that fails, from the path
    find_library gives; where that finds none, not at all."""
    if zstdframe._system_lib() is None:
        pytest.skip("no system libzstd")
    maps = Path("/proc/self/maps").read_text().split("\n")
    path = next(line.split()[-1] for line in maps if "/libzstd.so" in line)
    real = ctypes.CDLL
    tried: list[str] = []

    def cdll(name: str, *args: Any, **kwargs: Any) -> Any:
        tried.append(name)
        if name == "libzstd.so.1":
            raise OSError("refused by the test")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: path)
    lib = zstdframe._load_system_lib()
    assert lib is not None and lib.ZSTD_versionNumber() > 0
    assert tried == ["libzstd.so.1", path]
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert zstdframe._load_system_lib() is None
