"""The host index's C walk (csrc/hostscan.c, bulk._hostscan) against its Python twin.

``build_index`` with the C module and with ``BULK_NO_NATIVE=1`` (libpcap's reader
for microsecond pcap, bulk.trace's for nanosecond pcap, Collector.add for every
packet) must give the same index, byte for byte (``encode()``), or raise the
same error: on every bundled real trace, on damaged copies of them (cut short,
bogus captured lengths, odd snapshot lengths, the other byte order, nanosecond
resolution) and on generated packet lists. Each comparison also checks that the
C walk did run where it should, so that no test compares Python with itself.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulk import native
from bulk.archive import hostindex
from tests.conftest import TRACE_IDS, TRACES
from tests.unit.test_hostindex_sound import packet

PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")


def is_pcap(path: Path) -> bool:
    """A classic pcap file (what the C walk reads), whatever its name says."""
    with open(path, "rb") as f:
        return f.read(4) in PCAP_MAGICS


PCAPS = [t for t in TRACES if is_pcap(t)]
PCAP_IDS = [t.name for t in PCAPS]
MAX_CAPLEN = 262144

pytestmark = pytest.mark.skipif(
    native.load("hostscan") is None, reason="bulk._hostscan not built (no C compiler?)"
)


class Native:
    """Counts the C walks that ran (returned an index rather than None)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs = 0
        self._walk = hostindex._walk_native
        monkeypatch.setattr(hostindex, "_walk_native", self._counting)
        self._mp = monkeypatch

    def _counting(self, *args: object, **kwargs: object) -> object:
        result = self._walk(*args, **kwargs)  # type: ignore[arg-type]
        self.runs += result is not None
        return result

    def outcome(self, path: Path, native_on: bool) -> tuple[str, object]:
        if native_on:
            self._mp.delenv("BULK_NO_NATIVE", raising=False)
        else:
            self._mp.setenv("BULK_NO_NATIVE", "1")
        try:
            return "index", hostindex.build_index(str(path)).encode()
        except Exception as exc:  # noqa: BLE001 - the very exception is compared
            return type(exc).__name__, str(exc)

    def compare(self, path: Path, expect_native: bool = True) -> tuple[str, object]:
        """Both outcomes, asserted equal; the C walk must have run iff expected."""
        before = self.runs
        py = self.outcome(path, False)
        assert self.runs == before, "BULK_NO_NATIVE=1 still ran the C walk"
        c = self.outcome(path, True)
        if c != py:
            raise AssertionError(f"{path.name}: C {describe(c)} != Python {describe(py)}")
        if c[0] == "index":
            assert self.runs == before + (1 if expect_native else 0), "C walk not taken"
        return c


def describe(outcome: tuple[str, object]) -> str:
    kind, value = outcome
    if kind != "index":
        return f"{kind}: {value}"
    assert isinstance(value, bytes)
    ix = hostindex.HostIndex.decode(value)
    return (
        f"{ix.meta} addr4={ix.addr4_blob.hex()} addr6={len(ix.addr6_blob) // 16} "
        f"ports={ {p: b.hex() for p, b in ix.port_blobs.items()} }"
    )


@pytest.fixture
def twins(monkeypatch: pytest.MonkeyPatch) -> Native:
    return Native(monkeypatch)


# -- pcap files ----------------------------------------------------------------------------


def layout(raw: bytes) -> tuple[str, bool]:
    """(struct byte order, nanosecond) of a pcap file."""
    little = raw[:4] in PCAP_MAGICS[0::2]
    return ("<" if little else ">"), raw[:4] in PCAP_MAGICS[2:]


def records(raw: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """(offset, sec, frac, caplen, wirelen) of each whole record of a pcap file."""
    e, _ns = layout(raw)
    pos = 24
    while pos + 16 <= len(raw):
        sec, frac, cap, wire = struct.unpack_from(e + "IIII", raw, pos)
        if cap > MAX_CAPLEN or pos + 16 + cap > len(raw):
            return
        yield pos, sec, frac, cap, wire
        pos += 16 + cap


def swap_order(raw: bytes) -> bytes:
    """The same pcap file in the other byte order."""
    e, _ns = layout(raw)
    f = ">" if e == "<" else "<"
    out = [struct.pack(f + "IHHiIII", *struct.unpack_from(e + "IHHiIII", raw))]
    end = 24
    for pos, sec, frac, cap, wire in records(raw):
        out.append(struct.pack(f + "IIII", sec, frac, cap, wire) + raw[pos + 16 : pos + 16 + cap])
        end = pos + 16 + cap
    out.append(raw[end:])
    return b"".join(out)


def to_nanosecond(raw: bytes) -> bytes:
    """The same microsecond pcap file with nanosecond times."""
    e, _ns = layout(raw)
    out = [struct.pack(e + "I", 0xA1B23C4D), raw[4:24]]
    end = 24
    for pos, sec, frac, cap, wire in records(raw):
        out.append(struct.pack(e + "IIII", sec, (frac * 1000 + 7) & 0xFFFFFFFF, cap, wire))
        out.append(raw[pos + 16 : pos + 16 + cap])
        end = pos + 16 + cap
    out.append(raw[end:])
    return b"".join(out)


def pcap_file(
    linktype: int,
    packets: list[tuple[int, int, bytes]],
    *,
    snaplen: int = MAX_CAPLEN,
    nanosecond: bool = False,
    big_endian: bool = False,
    version: tuple[int, int] = (2, 4),
) -> bytes:
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, *version, 0, 0, snaplen, linktype)]
    for sec, frac, data in packets:
        out.append(struct.pack(e + "IIII", sec, frac, len(data), len(data) + 4) + data)
    return b"".join(out)


def set_caplen(raw: bytes, pos: int, caplen: int) -> bytes:
    b = bytearray(raw)
    b[pos + 8 : pos + 12] = struct.pack(layout(raw)[0] + "I", caplen)
    return bytes(b)


def set_snaplen(raw: bytes, snaplen: int) -> bytes:
    return raw[:16] + struct.pack(layout(raw)[0] + "I", snaplen) + raw[20:]


# -- real traces ---------------------------------------------------------------------------


@pytest.mark.parametrize("trace", TRACES, ids=TRACE_IDS)
def test_real_traces_same_index(trace: Path, twins: Native) -> None:
    kind, value = twins.compare(trace, expect_native=is_pcap(trace))
    assert kind == "index"
    if is_pcap(trace):
        ix = hostindex.HostIndex.decode(value)  # type: ignore[arg-type]
        assert ix.packets > 0


@pytest.mark.parametrize("trace", PCAPS, ids=PCAP_IDS)
def test_damaged_copies_same_index(trace: Path, twins: Native, tmp_path: Path) -> None:
    """Cut short anywhere, bogus lengths, odd snapshot lengths, other byte order, ns."""
    raw = trace.read_bytes()
    recs = list(records(raw))
    rng = random.Random(trace.name)
    variants: dict[str, tuple[bytes, bool]] = {}
    # cut inside and at the edges of the first, a middle and the last records
    for pos, *_rest, cap in [recs[0], recs[len(recs) // 2], recs[-1]]:
        for cut in sorted({pos, pos + 1, pos + 15, pos + 16, pos + 17, pos + 16 + cap - 1}):
            variants[f"cut{cut}"] = (raw[:cut], True)
    for cut in rng.sample(range(25, len(raw)), min(4, len(raw) - 25)):
        variants[f"cut{cut}"] = (raw[:cut], True)
    # bogus and over-snaplen captured lengths in a middle record (or the first)
    for which in {1 if len(recs) > 1 else 0, len(recs) // 2, len(recs) - 1}:
        pos, _sec, _frac, cap, _wire = recs[which]
        for caplen in (MAX_CAPLEN + 1, 0xFFFFFFFF, MAX_CAPLEN, cap + 1, max(cap - 1, 0)):
            variants[f"cap{which}-{caplen}"] = (set_caplen(raw, pos, caplen), True)
    # snapshot lengths libpcap adjusts, or cuts records to
    for snaplen in (0, 1, 20, 40, 64, MAX_CAPLEN - 1, MAX_CAPLEN + 1, 0xFFFFFFFF):
        # bulk.trace reads nanosecond records up to the snaplen: left to Python above 262144
        c_reads = not (layout(raw)[1] and snaplen > MAX_CAPLEN)
        variants[f"snap{snaplen}"] = (set_snaplen(raw, snaplen), c_reads)
    snapped = set_snaplen(raw, 40)
    variants["snap40-cut"] = (snapped[: recs[-1][0] + 30], True)
    variants["snap40-bogus"] = (set_caplen(snapped, recs[-1][0], MAX_CAPLEN + 5), True)
    # the other byte order, nanosecond resolution, both, damaged
    variants["big-endian"] = (swap_order(raw), True)
    variants["big-endian-cut"] = (swap_order(raw)[: len(raw) - 3], True)
    ns = raw if layout(raw)[1] else to_nanosecond(raw)
    variants["ns"] = (ns, True)
    variants["ns-big-endian"] = (swap_order(ns), True)
    variants["ns-cut-header"] = (ns[: recs[-1][0] + 9], True)
    variants["ns-cut-data"] = (ns[: recs[-1][0] + 20], True)
    variants["ns-bogus"] = (set_caplen(ns, recs[-1][0], MAX_CAPLEN + 1), True)
    # not read by the C walk: nanosecond with a snaplen above the maximum, pcap 2.3
    variants["ns-snap-big"] = (set_snaplen(ns, MAX_CAPLEN + 1), False)
    if not layout(raw)[1]:
        variants["v2.3"] = (raw[:6] + struct.pack(layout(raw)[0] + "H", 3) + raw[8:], False)
    for name, (data, expect_native) in variants.items():
        path = tmp_path / f"{name}.pcap"
        path.write_bytes(data)
        twins.compare(path, expect_native=expect_native)


def test_damage_is_reported_as_before(twins: Native, tmp_path: Path) -> None:
    """The error and completeness of a damaged trace, as the libpcap walk reports them."""
    raw = (Path(__file__).parents[1] / "data" / "zeek-smtp.pcap").read_bytes()
    recs = list(records(raw))
    pos = recs[5][0]
    cases = {
        "cut.pcap": (raw[: pos + 7], "truncated dump file; tried to read 16 header bytes", True),
        "bogus.pcap": (set_caplen(raw, pos, 300000), "invalid packet capture length 300000", False),
    }
    for name, (data, message, complete) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        kind, value = twins.compare(path)
        assert kind == "index"
        ix = hostindex.HostIndex.decode(value)  # type: ignore[arg-type]
        assert ix.packets == 5
        assert ix.meta["error"].startswith(message)
        assert ix.complete is complete


@pytest.mark.parametrize("chunk", [hostindex._CHUNK, 16 + MAX_CAPLEN, 16 + MAX_CAPLEN + 37])
def test_time_walk_folds_libpcap_batches(
    chunk: int, twins: Native, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A microsecond field of 1e6 or more orders keys and times differently: the walk
    then depends on libpcap's batches (4096 records: keys compared inside one, times
    across two), which the C walk folds alike, and on the batch an error cuts short
    (read again one record at a time). Read in chunks of several sizes (records
    then cross chunk boundaries at many places)."""
    monkeypatch.setattr(hostindex, "_CHUNK", chunk)
    frame = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + bytes(50)
    batch = 4096

    def trace(*anomalies: int, n: int = 3 * batch + 100) -> bytes:
        """One record a second; at each anomaly a record whose key sorts before the
        next one's while its time (2.5 s later) comes after it."""
        packets = [(10 + i, 0, frame) for i in range(n)]
        for i in anomalies:
            packets[i] = (10 + i, 2_500_000, frame)
        return pcap_file(1, packets)

    def ordered(path: Path) -> bool:
        return bool(hostindex.HostIndex.decode(twins.compare(path)[1]).meta["time_ordered"])  # type: ignore[arg-type]

    inside = 2 * batch + 50  # in the third batch
    bogus_at = list(records(trace()))[inside + 10][0]
    cases = {
        # across a batch edge: the times are compared, out of order
        "edge.pcap": (trace(batch - 1), False),
        # inside a batch: only the keys are compared, in order
        "inside.pcap": (trace(inside), True),
        # the batch an error cuts short is read one record at a time: times compared
        "bogus.pcap": (set_caplen(trace(inside), bogus_at, MAX_CAPLEN + 1), False),
        "cut.pcap": (trace(inside)[: bogus_at + 20], False),
    }
    for name, (data, python_says) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert ordered(path) is python_says, name  # the case tests what it means to


@pytest.mark.parametrize("chunk", [hostindex._CHUNK, 16 + MAX_CAPLEN])
def test_longest_records(
    chunk: int, twins: Native, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records up to the longest libpcap reads, in the smallest chunk that holds one."""
    monkeypatch.setattr(hostindex, "_CHUNK", chunk)
    udp = bytes(12) + b"\x08\x00" + struct.pack("!BBHHHBBH", 0x45, 0, 0, 0, 0, 64, 17, 0)
    udp += bytes(range(8)) + struct.pack("!HH", 53, 5353)
    sizes = [MAX_CAPLEN, 100, MAX_CAPLEN, 65535, MAX_CAPLEN - 1, 60, MAX_CAPLEN]
    packets = [(1_700_000_000 + i, 0, udp + bytes(n - len(udp))) for i, n in enumerate(sizes)]
    raw = pcap_file(1, packets)
    for name, data in {"whole.pcap": raw, "cut.pcap": raw[:-1000]}.items():
        path = tmp_path / name
        path.write_bytes(data)
        twins.compare(path)


EXT_HEADERS = {0, 43, 44, 51, 60, 135, 139, 140}


def edge_packets(linktype: int) -> list[tuple[bytes, bool]]:
    """IPv4 and IPv6 packets at the edges of the fast cases: every protocol and next
    header number, IHLs, fragment fields, lengths around the last byte read, tags;
    with whether the C walk must record them itself (else: hand them to Python)."""
    bodies: list[tuple[int, bytes, bool]] = []
    addrs = bytes(range(1, 33))
    frags = ((5, 0), (5, 0x4000), (5, 0x2000), (5, 1), (5, 0x100), (5, 0x1FFF), (6, 0), (4, 0))
    for proto in range(256):
        for ihl, frag in frags if proto in (0, 1, 6, 17, 132, 255) else frags[:1]:
            ip = struct.pack("!BBHHHBBH", 0x40 | ihl, 0, 40, proto, frag, 64, proto, 0)
            fast = ihl == 5 and frag & 0x1FFF == 0
            bodies.append((0x0800, ip + addrs[:8] + bytes([proto, 7, 0, 80, 9, 9, 9, 9]), fast))
        ip6 = struct.pack("!IHBB", 0x60000000, 16, proto, 64) + addrs
        body6 = ip6 + bytes([6, 0, 0, 21, 0, 0, 0, 0, 0, 25, 0, 80])
        bodies.append((0x86DD, body6, proto not in EXT_HEADERS))
    if linktype in (228, 229):
        want = 0x0800 if linktype == 228 else 0x86DD
        bodies = [b for b in bodies if b[0] == want]
    out = []
    for et, body, fast in bodies:
        heads = {
            1: [bytes(12) + struct.pack("!H", et), bytes(12) + struct.pack("!HHH", 0x8100, 5, et)],
            113: [bytes(14) + struct.pack("!H", et)],
            276: [struct.pack("!H", et) + bytes(18)],
            0: [struct.pack("<I", 2 if et == 0x0800 else 30)],
            108: [struct.pack(">I", 2 if et == 0x0800 else 24)],
        }.get(linktype, [b""])
        for head in heads:
            data = head + body
            ip_end = len(head) + (24 if et == 0x0800 else 44)
            for cut in (ip_end - 1, ip_end, len(data)):
                out.append((data[:cut], fast and cut >= ip_end))
    return out


Facts = tuple[bytes, bytes, dict[int, bytes], list[int], list[str]]


def python_facts(linktype: int, data: bytes) -> Facts:
    col = hostindex.Collector()
    col.add(linktype, data)
    addr4, addr6, ports = col.finish()
    return addr4, addr6, ports, sorted(col.protos), sorted(col.l3)


def c_facts(linktype: int, data: bytes) -> tuple[Facts, bool]:
    """One packet through the Scanner (what build_index does with a record), and
    whether the C walk recorded it itself."""
    mod = native.load("hostscan")
    assert mod is not None
    sc = mod.Scanner(linktype, True, False, False, MAX_CAPLEN)
    record = struct.pack("<IIII", 1, 0, len(data), len(data)) + data
    used, status, slow = sc.feed(record, len(record))
    assert (used, status) == (len(record), 0)
    col = hostindex.Collector()
    for d in slow:
        col.add(linktype, d)
    addr4, addr6, ports = col.finish()
    addr4, addr6, ports, protos, l3 = sc.finish(addr4, addr6, ports)
    facts = addr4, addr6, ports, sorted(col.protos | set(protos)), sorted(col.l3 | set(l3))
    return facts, not slow


@pytest.mark.parametrize("linktype", [1, 113, 276, 101, 0, 108, 228, 229])
def test_fast_case_edges_same_index(linktype: int, twins: Native, tmp_path: Path) -> None:
    packets = edge_packets(linktype)
    for data, fast in packets:  # each packet alone: nothing hides behind another
        facts, in_c = c_facts(linktype, data)
        assert facts == python_facts(linktype, data), data.hex()
        assert in_c is fast, data.hex()  # the common cases do stay in C
    path = tmp_path / "edges.pcap"
    records_ = [(1_700_000_000 + i, 0, d) for i, (d, _fast) in enumerate(packets)]
    path.write_bytes(pcap_file(linktype, records_))
    twins.compare(path)


# -- generated packets ---------------------------------------------------------------------

LINKTYPES = [1, 1, 1, 113, 276, 101, 0, 108, 228, 229, 9]


@st.composite
def ipv6_any_next(draw: st.DrawFn) -> bytes:
    """Ethernet, IPv6 with any next header (extension headers included), short bodies."""
    nh = draw(st.sampled_from([0, 43, 44, 51, 60, 135, 139, 140, 6, 17, 58, 132, 59]))
    body = draw(st.binary(min_size=0, max_size=12))
    ip = struct.pack("!IHBB", 0x60000000, len(body), nh, 64) + bytes(range(32)) + body
    return bytes(12) + b"\x86\xdd" + ip


@st.composite
def frames(draw: st.DrawFn, linktype: int) -> bytes:
    if linktype == 1:
        return draw(st.one_of(packet(1), packet(1), ipv6_any_next(), st.binary(max_size=80)))
    if linktype in (113, 276, 101, 0):
        return draw(st.one_of(packet(linktype), packet(linktype), st.binary(max_size=80)))
    if linktype == 108:  # loopback: the null header's family in network order
        data = draw(packet(0))
        return data[3::-1] + data[4:] if len(data) >= 4 else data
    if linktype in (228, 229):
        return draw(packet(101))
    return draw(st.binary(max_size=60))


@st.composite
def traces(draw: st.DrawFn) -> bytes:
    linktype = draw(st.sampled_from(LINKTYPES))
    nanosecond = draw(st.booleans())
    times = st.tuples(
        st.integers(0, 3),
        st.one_of(st.integers(0, 999_999), st.integers(0, 0xFFFFFFFF))
        if draw(st.booleans())
        else st.integers(0, 999_999_999 if nanosecond else 999_999),
    )
    body = draw(st.lists(st.tuples(times, frames(linktype)), min_size=1, max_size=40))
    packets = [(t[0] + 1_700_000_000, t[1], data) for t, data in body]
    snaplen = draw(st.sampled_from([MAX_CAPLEN, MAX_CAPLEN, 0, 30, 42, 60, MAX_CAPLEN + 1]))
    raw = pcap_file(
        linktype,
        packets,
        snaplen=snaplen,
        nanosecond=nanosecond,
        big_endian=draw(st.booleans()),
    )
    damage = draw(st.sampled_from(["none", "none", "cut", "bogus"]))
    if damage == "cut":
        raw = raw[: draw(st.integers(24 + 16 + len(packets[0][2]), len(raw)))]
    elif damage == "bogus":
        ends = [24]
        for _t, _f, data in packets:
            ends.append(ends[-1] + 16 + len(data))
        at = draw(st.sampled_from(ends[1:-1] or [ends[-1]]))
        e = ">" if raw[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d") else "<"
        fill = struct.pack(e + "IIII", 1_700_000_000, 0, MAX_CAPLEN + 1, 0)
        raw = raw[:at] + fill + raw[at + 16 :] if at + 16 <= len(raw) else raw + fill
    return raw


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=traces())
def test_generated_traces_same_index(raw: bytes, twins: Native, tmp_path: Path) -> None:
    path = tmp_path / "gen.pcap"
    path.write_bytes(raw)
    snaplen = int.from_bytes(raw[16:20], "little" if raw[0] == 0xD4 or raw[0] == 0x4D else "big")
    nanosecond = raw[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    twins.compare(path, expect_native=not (nanosecond and snaplen > MAX_CAPLEN))


@settings(max_examples=300, deadline=None)
@given(
    blob=st.binary(max_size=400),
    linktype=st.sampled_from(LINKTYPES),
    swapped=st.booleans(),
    nanosecond=st.booleans(),
    snapshot=st.sampled_from([0, 1, 40, MAX_CAPLEN]),
)
def test_feed_takes_any_bytes(
    blob: bytes, linktype: int, swapped: bool, nanosecond: bool, snapshot: int
) -> None:
    """Garbage in: whole records are walked, the rest is left, nothing is read past it."""
    mod = native.load("hostscan")
    assert mod is not None
    sc = mod.Scanner(linktype, True, swapped, nanosecond, snapshot)
    buf = bytearray(blob) + bytearray(64)  # bytes past `size` must not count
    used, status, slow = sc.feed(buf, len(blob))
    assert 0 <= used <= len(blob)
    assert status in (0, -1)
    sc.end(status < 0)
    packets = sc.walk()[0]
    assert len(slow) <= packets
    assert all(len(d) <= len(blob) for d in slow)
    with pytest.raises(ValueError):
        sc.feed(buf, len(buf) + 1)
