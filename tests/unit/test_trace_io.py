"""The trace layer against libpcap itself (pcapy-ng) and round-trip properties."""

from __future__ import annotations

import gzip
import io
import os
import random
import subprocess
from pathlib import Path

import pcapy
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk.errors import TraceError, TruncatedTrace
from bulk.trace import Packet, PcapWriter, iter_packets, open_trace
from bulk.trace.magic import compression_of, sniff_compression
from tests.conftest import DATA, MANIFEST, TRACE_IDS, TRACES, require_tool

TRUNCATED = {e["file"] for e in MANIFEST if e["truncated_file"]}


def read_all(path: str | os.PathLike[str]) -> tuple[list[Packet], Exception | None]:
    packets: list[Packet] = []
    try:
        with open_trace(str(path)) as reader:
            packets.extend(reader)
    except TraceError as exc:
        return packets, exc
    return packets, None


def libpcap_packets(path: Path) -> list[tuple[int, int, bytes]]:
    """(ts_us, wirelen, data) of every packet as libpcap 1.9 reads it."""
    handle = pcapy.open_offline(str(path))
    out = []
    while True:
        try:
            hdr, data = handle.next()
        except pcapy.PcapError:
            break
        if hdr is None:
            break
        sec, usec = hdr.getts()
        out.append((sec * 1_000_000 + usec, hdr.getlen(), bytes(data)))
    return out


@pytest.mark.parametrize("path", TRACES, ids=TRACE_IDS)
def test_reader_matches_libpcap(path: Path) -> None:
    ours, err = read_all(path)
    theirs = libpcap_packets(path)
    assert len(ours) == len(theirs)
    for mine, (ts_us, wirelen, data) in zip(ours, theirs, strict=True):
        # pcapy's header gives microseconds; ours keeps nanoseconds.
        assert mine.ts_ns // 1000 == ts_us
        assert mine.wirelen == wirelen
        assert mine.data == data
    if path.name in TRUNCATED:
        assert isinstance(err, TruncatedTrace)
        assert str(path) in str(err) and "byte" in str(err)
    else:
        assert err is None


def _compressed(path: Path, kind: str, tmp_path: Path) -> Path:
    raw = path.read_bytes()
    out = tmp_path / (path.name + (".gz" if kind == "gzip" else ".zst"))
    if kind == "gzip":
        out.write_bytes(gzip.compress(raw))
    else:
        out.write_bytes(zstandard.ZstdCompressor(level=3).compress(raw))
    return out


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
@pytest.mark.parametrize("path", TRACES, ids=TRACE_IDS)
def test_compressed_reads_identical(path: Path, kind: str, tmp_path: Path) -> None:
    plain, plain_err = read_all(path)
    packets, err = read_all(_compressed(path, kind, tmp_path))
    assert packets == plain
    assert type(err) is type(plain_err)


def test_multi_frame_zstd_with_skippable_frame(tmp_path: Path) -> None:
    """Independently decodable frames plus a skippable frame read as one stream."""
    raw = (DATA / "zeek-smtp.pcap").read_bytes()
    cctx = zstandard.ZstdCompressor(level=1)
    skippable = (0x184D2A5E).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"idx!"
    blob = b"".join(cctx.compress(raw[i : i + 4000]) for i in range(0, len(raw), 4000))
    out = tmp_path / "frames.pcap.zst"
    out.write_bytes(blob + skippable)
    assert read_all(out) == read_all(DATA / "zeek-smtp.pcap")


@pytest.mark.parametrize("path", TRACES, ids=TRACE_IDS)
def test_compression_of_what_the_tools_write(path: Path, tmp_path: Path) -> None:
    """gzip and zstd output of every real trace is told by its magic; the trace is not."""
    assert sniff_compression(str(path)) is None
    for tool in ("gzip", "zstd"):
        out = tmp_path / f"out.{tool}"
        with open(out, "wb") as f:
            subprocess.run([require_tool(tool), "-c", str(path)], stdout=f, check=True)
        assert sniff_compression(str(out)) == tool


@pytest.mark.parametrize("magic", range(0x184D2A4F, 0x184D2A61), ids=hex)
def test_compression_of_a_leading_skippable_frame(magic: int, tmp_path: Path) -> None:
    """A frame magic just below, inside and just above zstd's skippable range
    before a real zstd frame: bulk says zstd exactly when zstd -t accepts it."""
    frame = zstandard.ZstdCompressor().compress((DATA / "dns_udp.pcap").read_bytes())
    blob = magic.to_bytes(4, "little") + (3).to_bytes(4, "little") + b"idx" + frame
    out = tmp_path / "skip.zst"
    out.write_bytes(blob)
    ok = subprocess.run([require_tool("zstd"), "-q", "-t", str(out)], check=False)
    assert (compression_of(blob) == "zstd") == (ok.returncode == 0)
    assert compression_of(blob[:3]) is None  # too short to tell


def test_truncated_compressed_stream(tmp_path: Path) -> None:
    blob = gzip.compress((DATA / "zeek-smtp.pcap").read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    packets, err = read_all(cut)
    assert packets  # the whole packets before the cut
    assert isinstance(err, TruncatedTrace)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00", b"hello world, not a trace at all\n", bytes(range(256)) * 4],
    ids=["empty", "one-byte", "text", "binary"],
)
def test_not_a_trace(content: bytes, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    with pytest.raises(TraceError) as info:
        open_trace(str(bad))
    assert not isinstance(info.value, TruncatedTrace) or content == b""
    assert str(bad) in str(info.value)


def test_corrupt_record_length_stops_with_offset(tmp_path: Path) -> None:
    raw = bytearray((DATA / "zeek-http-get.pcap").read_bytes())
    # Corrupt the third record's captured length.
    offset = 24
    for _ in range(2):
        caplen = int.from_bytes(raw[offset + 8 : offset + 12], "little")
        offset += 16 + caplen
    raw[offset + 8 : offset + 12] = (0x7FFFFFFF).to_bytes(4, "little")
    bad = tmp_path / "corrupt.pcap"
    bad.write_bytes(bytes(raw))
    packets, err = read_all(bad)
    assert len(packets) == 2
    assert isinstance(err, TraceError) and not isinstance(err, TruncatedTrace)
    assert f"byte {offset}" in str(err)


packet_strategy = st.builds(
    Packet,
    ts_ns=st.integers(min_value=0, max_value=(2**32 - 1) * 1_000_000_000),
    wirelen=st.integers(min_value=0, max_value=2**31),
    linktype=st.just(1),
    data=st.binary(max_size=300),
)


@settings(max_examples=200, deadline=None)
@given(packets=st.lists(packet_strategy, max_size=30), nanosecond=st.booleans())
def test_write_read_round_trip(packets: list[Packet], nanosecond: bool) -> None:
    buf = io.BytesIO()
    writer = PcapWriter(buf, linktype=1, nanosecond=nanosecond)
    for pkt in packets:
        writer.write(pkt)
    writer.close()
    path_free = buf.getvalue()
    reader_input = Path(os.environ.get("TMPDIR", "/tmp")) / f"rt-{os.getpid()}.pcap"
    reader_input.write_bytes(path_free)
    try:
        back, err = read_all(reader_input)
    finally:
        reader_input.unlink()
    assert err is None
    expected = [p if nanosecond else p._replace(ts_ns=p.ts_ns - p.ts_ns % 1000) for p in packets]
    assert back == expected


def test_merge_is_time_ordered_and_complete() -> None:
    paths = [str(DATA / "zeek-http-get.pcap"), str(DATA / "ssh-on-port-80.pcap")]
    merged = list(iter_packets(paths))
    singles = [p for path in paths for p in read_all(path)[0]]
    assert sorted(merged, key=lambda p: p.ts_ns) == merged
    assert sorted(singles) == sorted(merged)


def test_merge_reports_truncation_after_all_packets() -> None:
    paths = [str(DATA / "zeek-smtp-cut-mid-packet.pcap"), str(DATA / "zeek-http-get.pcap")]
    got: list[Packet] = []
    with pytest.raises(TruncatedTrace):
        got.extend(iter_packets(paths))
    assert len(got) == len(read_all(paths[0])[0]) + len(read_all(paths[1])[0])


def test_shuffled_input_still_readable() -> None:
    rng = random.Random(7)
    packets, _ = read_all(DATA / "test5-lines.pcap")
    rng.shuffle(packets)
    buf = io.BytesIO()
    with PcapWriter(buf, 1) as w:
        for p in packets:
            w.write(p)
    assert len(buf.getvalue()) == (DATA / "test5-lines.pcap").stat().st_size


def test_bpf_on_raw_ip_trace_matches_tcpdump(tmp_path: Path) -> None:
    """LINKTYPE_RAW (101) must compile as libpcap's DLT_RAW; tcpdump is the oracle."""
    tcpdump = require_tool("tcpdump")
    raw = tmp_path / "raw.pcap"
    with PcapWriter(str(raw), linktype=101) as w:
        for p in read_all(DATA / "zeek-http-get.pcap")[0]:
            w.write_record(p.ts_ns, p.wirelen - 14, p.data[14:])  # strip Ethernet
    for expr in ("tcp port 80", "host 192.150.187.43 and tcp[13] & 2 != 0", "udp"):
        ours = [p.data for p in iter_packets([str(raw)], bpf=expr)]
        out = tmp_path / "tcpdump.pcap"
        subprocess.run(
            [tcpdump, "-r", str(raw), "-w", str(out), expr], check=True, capture_output=True
        )
        assert ours == [p.data for p in read_all(out)[0]], expr
