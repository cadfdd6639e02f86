"""The backdoor fast path's packet gate: bulk._flowgate (csrc/flowgate.c) against
its Python twin (bulk.analyzers.flowgate), both against libpcap.

* BPF: both gates run libpcap's own ``bpf_filter`` (the C one through a
  function pointer, the twin through ctypes); what is tested is the plumbing:
  the record's wire length and the captured bytes handed to it (against
  libpcap's savefile reader with the filter set, on a copy whose packets are
  cut), which program runs on which packet (selection, below), and programs
  libpcap's ``bpf_validate`` refuses, refused.
* Selection: with nothing decided, the gate hands Python exactly the packets
  libpcap's two passes with pcapy-ng's ``loop_filtered`` handed it before.
* Findings: `bulk backdoor` with the C gate and with the twin, identical JSON
  (every field) and counters, on every corpus trace and on damaged copies
  (cut anywhere, an impossible captured length, a small snapshot length).
* The gate's own rules on built packets: done set both directions, IPv4 and
  IPv6, SYN never skipped, VLAN-tagged packets, per-direction cut-off, pure
  ACKs, link types the classifier does not know.
"""

from __future__ import annotations

import json
import os
import random
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pcapy
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from bulk import native
from bulk.analyzers import backdoor_run, flowgate
from bulk.analyzers.backdoor import BackdoorConfig
from bulk.analyzers.standard_ports import StandardPorts
from bulk.errors import FilterError, TraceError
from bulk.trace import PcapWriter, open_trace
from bulk.trace.bpf import _LINKTYPE_TO_DLT as LINKTYPE_TO_DLT
from bulk.trace.packet import LINKTYPE_ETHERNET, Packet
from tests.conftest import DATA
from tests.pktbuild import ACK, FIN, Conn, ether, ipv4, tcp_header

C: Any = native.load("flowgate")
needs_c = pytest.mark.skipif(C is None, reason="bulk._flowgate not built (no C compiler?)")
IMPLS = [pytest.param(C, id="c", marks=needs_c), pytest.param(flowgate, id="python")]

CLASSIC = sorted(
    p for p in DATA.iterdir() if p.suffix == ".pcap" and flowgate.prepare_path(p) is not None
)


def _packets(path: Path) -> list[Packet]:
    out: list[Packet] = []
    try:
        with open_trace(str(path)) as reader:
            out.extend(reader)
    except TraceError:
        pass
    return out


def _expr(expr: str | None, linktype: int) -> str:
    if expr is not None:
        return expr
    if linktype == LINKTYPE_ETHERNET:
        return backdoor_run.HEADS_FILTER_ETHERNET
    return backdoor_run.HEADS_FILTER


# ---------------------------------------------------------------- BPF


def _cut_copy(tmp_path: Path, caplen: int = 96) -> Path:
    """A copy of a trace whose packets are cut to ``caplen``: wire length > captured length."""
    src = DATA / "zeek-smtp.pcap"
    cut = tmp_path / "cut.pcap"
    with open_trace(str(src)) as reader, cut.open("wb") as fh:
        w = PcapWriter(fh, reader.linktype, snaplen=caplen)
        for p in reader:
            w.write(Packet(p.ts_ns, p.wirelen, p.linktype, p.data[:caplen]))
        w.close()
    return cut


def _gate_raw(impl: Any, path: Path, program: bytes | None) -> list[tuple[int, bytes]]:
    """Every packet ``program`` accepts (l2 < 0: the gate runs it on every record)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        head = flowgate.prepare(fd)
        assert head is not None
        gate = impl.Gate()
        gate.open(fd, head.swapped, head.nsec, head.snaplen, -1, -1, 16, None, program,
                  flowgate.bpf_functions())  # fmt: skip
        return [(w, d) for _, w, d in gate]
    finally:
        os.close(fd)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "expr", ["greater 200", "less 80", "len >= 1000 and tcp", "tcp and greater 150"]
)
def test_bpf_wire_length_as_libpcaps_reader(tmp_path: Path, impl: Any, expr: str) -> None:
    cut = _cut_copy(tmp_path)
    r = pcapy.open_offline(str(cut))
    r.setfilter(expr)
    want = []
    while True:
        hdr, data = r.next()
        if hdr is None:
            break
        want.append((hdr.getlen(), data))
    (program,) = flowgate.programs([expr], LINKTYPE_ETHERNET)
    assert _gate_raw(impl, cut, program) == want
    assert want and len(want) < len(_packets(cut))
    # The same file through the heads/'not ip' selection: libpcap's two passes.
    assert Counter((w, d) for _, w, d in _gate_packets(impl, cut, expr)) == Counter(
        _libpcap_passes(cut, expr)
    )


BAD_PROGRAMS = [
    b"",
    flowgate.pack([(0x06, 0, 0, 1)])[:-1],  # not a whole instruction
    flowgate.pack([(0x06, 0, 0, 1)] * 4097),  # too long
    flowgate.pack([(0x15, 5, 0, 1), (0x06, 0, 0, 1)]),  # jumps out
    flowgate.pack([(0x28, 0, 0, 12)]),  # no return at the end
    flowgate.pack([(0xFFFF, 0, 0, 0), (0x06, 0, 0, 1)]),  # no such instruction: bpf_validate
    flowgate.pack([(0x0104, 0, 0, 0), (0x06, 0, 0, 1)]),  # passes them, bpf_filter aborts
    flowgate.pack([(0x08, 0, 0, 0), (0x06, 0, 0, 1)]),
    flowgate.pack([(0xF7, 0, 0, 0), (0x06, 0, 0, 1)]),
    flowgate.pack([(0x02, 0, 0, 16), (0x06, 0, 0, 1)]),  # memory word 16
    flowgate.pack([(0x34, 0, 0, 0), (0x06, 0, 0, 1)]),  # A /= 0
]


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_programs_are_refused(impl: Any) -> None:
    fd = os.open(DATA / "zeek-smtp.pcap", os.O_RDONLY)
    fns = flowgate.bpf_functions()
    try:
        gate = impl.Gate()

        def open_(program: Any, fns: Any = fns) -> None:
            gate.open(fd, False, False, 65535, -1, -1, 16, None, program, fns)

        accept_all = flowgate.pack([(0x06, 0, 0, 0xFFFF)])
        open_(accept_all)
        assert len(list(gate)) == len(_packets(DATA / "zeek-smtp.pcap"))
        for bad in BAD_PROGRAMS:
            with pytest.raises(ValueError):
                open_(bad)
            assert list(gate) == []  # the file before is forgotten
        with pytest.raises(TypeError):
            open_("x")
        for no in ((0, fns.bpf_validate), (fns.bpf_filter, 0)):
            with pytest.raises(ValueError):
                open_(accept_all, no)
    finally:
        os.close(fd)


@needs_c
def test_every_code_refused_or_run_alike() -> None:
    # Every one-byte code (and a few wider ones) as a program's first
    # instruction: refused by both gates, or run by libpcap over a trace with
    # the same packets out (a code bpf_filter does not know would abort). The
    # codes libpcap's compiler makes are all run.
    path = DATA / "tcp-handshake-nano.pcap"
    fns = flowgate.bpf_functions()
    fd = os.open(path, os.O_RDONLY)
    run = set()
    try:
        head = flowgate.prepare(fd)
        assert head is not None
        for code in [*range(256), 0x0104, 0x8000, 0xFFFF]:
            prog = flowgate.pack([(code, 0, 0, 1), (0x16, 0, 0, 0)])  # (code); ret A
            got = []
            for impl in (C, flowgate):
                gate = impl.Gate()
                try:
                    gate.open(fd, head.swapped, head.nsec, head.snaplen, -1, -1, 16, None, prog,
                              fns)  # fmt: skip
                except ValueError:
                    got.append(None)
                else:
                    got.append(list(gate))
            assert got[0] == got[1], hex(code)
            if got[0] is not None:
                run.add(code)
    finally:
        os.close(fd)
    compiled = {
        code
        for expr in ["tcp[13] & 2 != 0 and len > 60", "(ip[2:2] / 3) % 7 == 1 or ip6", "vlan"]
        for code, _, _, _ in struct.iter_unpack("=HBBI", flowgate.programs([expr], 1)[0] or b"")
    }
    assert compiled <= run
    assert 0xFFFF not in run and 0x08 not in run


# ---------------------------------------------------------------- selection


def _gate_packets(impl: Any, path: Path, expr: str | None = None) -> list[tuple[int, int, bytes]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        head = flowgate.prepare(fd)
        assert head is not None
        gate = impl.Gate()
        backdoor_run._gate_open(gate, fd, head, expr, 16)
        out = []
        try:
            out.extend(gate)
        except (impl.TruncatedError, impl.CorruptError):
            pass
        return out
    finally:
        os.close(fd)


def _libpcap_passes(path: Path, expr: str | None = None) -> list[tuple[int, bytes]]:
    """What the two libpcap passes of loop_filtered handed Python (the old fast path)."""
    head = flowgate.prepare_path(path)
    assert head is not None
    dlt = LINKTYPE_TO_DLT.get(head.linktype, head.linktype)
    known = backdoor_run._L2_OFFSET.get(dlt)
    if known is None:
        passes = [(expr, 3, 2**31 - 1)]
    else:
        heads = _expr(None, dlt)
        passes = [
            (expr or heads, 2, 16),
            (f"not ip and ({expr})" if expr else "not ip", 1, 2**31 - 1),
        ]
    got: list[tuple[int, bytes]] = []
    for flt, mask, cutoff in passes:
        r = pcapy.open_offline(str(path))
        if flt:
            r.setfilter(flt)
        try:
            r.loop_filtered(
                -1,
                lambda h, d, _c: got.append((h.getlen(), d)),
                admit_mask=mask,
                flow_cutoff=cutoff,
                l2_offset=known or 0,
            )
        except pcapy.PcapError:
            pass
        r.close()
    return got


@needs_c
@pytest.mark.parametrize("expr", [None, "tcp port 80 or ip6", "vlan"])
@pytest.mark.parametrize("path", CLASSIC, ids=[p.name for p in CLASSIC])
def test_selection_is_libpcaps_two_passes(path: Path, expr: str | None) -> None:
    try:
        new = _gate_packets(C, path, expr)
    except FilterError as exc:
        # libpcap cannot compile it for this link type ('vlan' on Linux cooked):
        # the twin must refuse it with the same line.
        with pytest.raises(FilterError) as twin:
            _gate_packets(flowgate, path, expr)
        assert str(twin.value) == str(exc)
        return
    assert Counter((w, d) for _, w, d in new) == Counter(_libpcap_passes(path, expr))
    assert new == _gate_packets(flowgate, path, expr)


# ---------------------------------------------------------------- findings, C vs Python


def _run(path: Path, native_on: bool, mp: pytest.MonkeyPatch, **kw: Any) -> dict[str, Any]:
    if native_on:
        mp.delenv("BULK_NO_NATIVE", raising=False)
    else:
        mp.setenv("BULK_NO_NATIVE", "1")
    found: list[Any] = []
    cfg = BackdoorConfig(standard=StandardPorts.load(None, ()), report_standard=True)
    error = None
    try:
        stats = backdoor_run.run([str(path)], cfg, found.append, **kw)
    except TraceError as exc:
        error = f"{type(exc).__name__}: {exc}"
        stats = None
    return {
        "findings": [json.dumps(f.to_json(), sort_keys=True) for f in found],
        "error": error,
        "stats": None
        if stats is None
        else (
            stats.packets_to_python,
            stats.packets_skipped,
            stats.packets_dropped_in_c,
            stats.flows,
        ),
        "gate": None if stats is None else stats.gate,
    }


def _same(path: Path, mp: pytest.MonkeyPatch, **kw: Any) -> dict[str, Any]:
    c = _run(path, True, mp, **kw)
    py = _run(path, False, mp, **kw)
    assert c["gate"] in ("c", None) and py["gate"] in ("python", None)
    c.pop("gate")
    py.pop("gate")
    assert c == py, path.name
    return c


@needs_c
@pytest.mark.parametrize("path", CLASSIC, ids=[p.name for p in CLASSIC])
def test_findings_c_and_python_on_the_corpus(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _same(path, monkeypatch)
    _same(path, monkeypatch, bpf="tcp")


def _damaged(src: Path, dst: Path, rng: random.Random) -> Iterator[Path]:
    raw = src.read_bytes()
    little = raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    u32 = "<I" if little else ">I"
    for cut in sorted(rng.sample(range(24, len(raw)), min(4, len(raw) - 24))):
        dst.write_bytes(raw[:cut])  # cut anywhere (mid header, mid record)
        yield dst
    offs = []
    pos = 24
    while pos + 16 <= len(raw):
        offs.append(pos)
        pos += 16 + struct.unpack_from(u32, raw, pos + 8)[0]
    if offs:
        bad = bytearray(raw)
        at = rng.choice(offs)
        struct.pack_into(u32, bad, at + 8, rng.choice([262145, 2**32 - 1, 300000]))
        dst.write_bytes(bytes(bad))  # an impossible captured length
        yield dst
    small = bytearray(raw)
    struct.pack_into(u32, small, 16, 60)  # snapshot length 60: longer records are cut to it
    dst.write_bytes(bytes(small))
    yield dst


@needs_c
@pytest.mark.parametrize("path", CLASSIC, ids=[p.name for p in CLASSIC])
def test_findings_c_and_python_on_damaged_copies(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(path.name)
    for copy in _damaged(path, tmp_path / "damaged.pcap", rng):
        _same(copy, monkeypatch)


@needs_c
def test_damage_is_reported_as_libpcap_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = (DATA / "zeek-smtp.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(raw[:-100])
    res = _same(cut, monkeypatch)
    r = pcapy.open_offline(str(cut))
    with pytest.raises(pcapy.PcapError) as err:
        while r.next()[0] is not None:
            pass
    assert res["error"] == f"TruncatedTrace: {cut}: {err.value}"
    assert res["findings"]  # what came before the damage


# ---------------------------------------------------------------- the gate's rules


def _write(path: Path, pkts: list[Packet], linktype: int = LINKTYPE_ETHERNET) -> Path:
    with path.open("wb") as fh:
        w = PcapWriter(fh, linktype)
        for p in pkts:
            w.write(p)
        w.close()
    return path


class Reader:
    """A gate over a file, read one packet at a time (decisions in between)."""

    def __init__(self, impl: Any, path: Path, cutoff: int = 16) -> None:
        self.impl = impl
        self.fd = os.open(path, os.O_RDONLY)
        head = flowgate.prepare(self.fd)
        assert head is not None
        self.gate = impl.Gate()
        backdoor_run._gate_open(self.gate, self.fd, head, None, cutoff)

    def datas(self) -> list[bytes]:
        return [d for _, _, d in self.gate]

    def close(self) -> None:
        os.close(self.fd)


def _keys(a: str, ap: int, b: str, bp: int) -> tuple[bytes, bytes]:
    import ipaddress  # noqa: PLC0415

    x, y = ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed
    return x + y + struct.pack("!HH", ap, bp), y + x + struct.pack("!HH", bp, ap)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("c", "s"), [("10.0.0.1", "10.0.0.2"), ("2001:db8::1", "2001:db8::2")])
def test_done_set_both_directions_never_a_syn(impl: Any, c: str, s: str, tmp_path: Path) -> None:
    conn = Conn(c=c, s=s, sp=5555)
    first = [*conn.handshake(), conn.c2s(0, b"GET / HTTP/1.0\r\n\r\n")]
    later = [
        conn.s2c(0, b"HTTP/1.1 200 OK\r\n\r\n"),
        conn.c2s(18, b"more"),
        conn.syn(),
        conn.s2c(19, b"", ACK | FIN),
    ]
    path = _write(tmp_path / "t.pcap", first + later)
    rd = Reader(impl, path)
    got = []
    for _, _, data in rd.gate:
        got.append(data)
        if data == first[-1].data:  # decided after the request: both directions
            for k in _keys(c, conn.cp, s, conn.sp):
                rd.gate.add(k)
    rd.close()
    pure_ack = first[2].data  # an IPv4 pure ACK is no head; IPv6 is not cut (not IPv4)
    want = [p.data for p in first if ":" in c or p.data != pure_ack] + [later[2].data]
    assert got == want  # after the decision only the SYN
    assert rd.gate.stats()["skipped"] == 3
    assert len(rd.gate) == 2 and _keys(c, conn.cp, s, conn.sp)[1] in rd.gate


@pytest.mark.parametrize("impl", IMPLS)
def test_discard_lets_packets_through_again(impl: Any, tmp_path: Path) -> None:
    conn = Conn()
    pkts = [conn.c2s(i * 4, b"data") for i in range(6)]
    path = _write(tmp_path / "t.pcap", pkts)
    rd = Reader(impl, path)
    keys = _keys("10.0.0.1", conn.cp, "10.0.0.2", conn.sp)
    got = []
    for i, (_, _, data) in enumerate(rd.gate):
        got.append(data)
        if i == 0:
            rd.gate.add(keys[0])
            rd.gate.add(keys[1])
        if i == 0:  # the connection ends at once: its keys go
            rd.gate.discard(keys[0])
    # keys[1] (the other direction) is still there: does not cover c2s packets.
    rd.close()
    assert got == [p.data for p in pkts]
    assert keys[0] not in rd.gate and keys[1] in rd.gate


@pytest.mark.parametrize("impl", IMPLS)
def test_cutoff_per_direction_and_file(impl: Any, tmp_path: Path) -> None:
    conn = Conn()
    c2s = [conn.c2s(i, b"x") for i in range(5)]
    s2c = [conn.s2c(i, b"y") for i in range(5)]
    path = _write(tmp_path / "t.pcap", [p for pair in zip(c2s, s2c, strict=True) for p in pair])
    rd = Reader(impl, path, cutoff=3)
    assert rd.datas() == [p.data for pair in zip(c2s[:3], s2c[:3], strict=True) for p in pair]
    rd.close()
    rd = Reader(impl, path, cutoff=3)  # a new file: counted afresh
    assert len(rd.datas()) == 6
    rd.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_vlan_tagged_heads_are_cut_off_but_not_skipped(impl: Any, tmp_path: Path) -> None:
    # Tagged IPv4 heads pass the heads filter and the cut-off (pcapy-ng's
    # classifier skips up to two tags); the done set covers untagged packets
    # only (its keys lie at the untagged offsets), as before.
    def tagged(p: Packet, vlans: tuple[int, ...]) -> Packet:
        return Packet(
            p.ts_ns, p.wirelen + 4 * len(vlans), p.linktype, ether(p.data[14:], 0x0800, vlans)
        )

    conn = Conn()
    one = [tagged(conn.c2s(i, b"x"), (7,)) for i in range(4)]
    two = [tagged(conn.s2c(i, b"y"), (7, 8)) for i in range(4)]
    ack = tagged(conn.c2s(4, b"", ACK), (7,))
    path = _write(tmp_path / "t.pcap", [*one, *two, ack])
    rd = Reader(impl, path, cutoff=2)
    for k in _keys("10.0.0.1", conn.cp, "10.0.0.2", conn.sp):
        rd.gate.add(k)
    assert rd.datas() == [p.data for p in (*one[:2], *two[:2])]
    rd.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_not_ipv4_goes_through_whole(impl: Any, tmp_path: Path) -> None:
    conn = Conn(c="2001:db8::1", s="2001:db8::2")
    v6 = [conn.c2s(i, b"") for i in range(20)]  # pure ACKs, more than the cut-off
    arp = Packet(v6[0].ts_ns, 42, LINKTYPE_ETHERNET, ether(b"\x00" * 28, 0x0806))
    udp4 = Packet(
        v6[0].ts_ns,
        60,
        LINKTYPE_ETHERNET,
        ether(ipv4("10.0.0.1", "10.0.0.2", 17, b"\x00" * 12), 0x0800),
    )
    path = _write(tmp_path / "t.pcap", [*v6, arp, udp4])
    rd = Reader(impl, path, cutoff=2)
    assert rd.datas() == [p.data for p in [*v6, arp]]  # IPv4 UDP: not a head
    rd.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_link_type_delivers_everything(impl: Any, tmp_path: Path) -> None:
    raw = [ipv4("10.0.0.1", "10.0.0.2", 6, tcp_header(1, 2, 3, 4, ACK)) for _ in range(20)]
    pkts = [Packet(i, len(d), 101, d) for i, d in enumerate(raw)]  # LINKTYPE_RAW
    path = _write(tmp_path / "t.pcap", pkts, linktype=101)
    rd = Reader(impl, path, cutoff=2)
    rd.gate.add(_keys("10.0.0.1", 1, "10.0.0.2", 2)[0])
    assert rd.datas() == raw
    rd.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_key_checks(impl: Any) -> None:
    gate = impl.Gate()
    for bad in (b"", b"x" * 37):
        with pytest.raises(ValueError):
            gate.add(bad)
    gate.add(b"k" * 12)
    gate.add(b"k" * 12)
    gate.discard(b"absent")
    assert len(gate) == 1 and b"k" * 12 in gate and b"k" * 36 not in gate
    assert list(gate) == []  # nothing opened: nothing to read
    gate.close()
    assert list(gate) == []
    for i in range(1, 5000):  # growth, and deleted slots reused
        gate.add(i.to_bytes(12, "big"))
        gate.discard((i - 1).to_bytes(12, "big"))
    assert len(gate) == 2 and (4999).to_bytes(12, "big") in gate


def test_prepare_refuses_what_is_not_classic_pcap(tmp_path: Path) -> None:
    assert flowgate.prepare_path(DATA / "irc-dcc-send.pcapng") is None
    short = tmp_path / "short.pcap"
    short.write_bytes((DATA / "irc-basic.pcap").read_bytes()[:20])
    assert flowgate.prepare_path(short) is None
    head = flowgate.prepare_path(DATA / "tcp-handshake-nano.pcap")
    assert head is not None and head.nsec


@needs_c
def test_cli_json_identical(tmp_path: Path) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    paths = [str(p) for p in CLASSIC]
    outs = []
    for env in ({}, {"BULK_NO_NATIVE": "1"}):
        proc = subprocess.run(
            [sys.executable, "-m", "bulk", "backdoor", "--json", "--all", "--stats", "-r", *paths],
            capture_output=True,
            env={**os.environ, **env},
            check=False,
        )
        outs.append((proc.returncode, proc.stdout, proc.stderr.replace(b"gate python", b"gate c")))
    assert outs[0] == outs[1]
    assert outs[0][1].count(b"\n") > 20


MUTABLE = [p for p in CLASSIC if p.stat().st_size < 200_000]


@needs_c
@given(
    which=st.sampled_from(MUTABLE),
    flips=st.lists(st.tuples(st.integers(24, 10**6), st.integers(0, 255)), max_size=12),
    cut=st.none() | st.integers(0, 10**6),
)
def test_findings_c_and_python_on_mutated_traces(
    which: Path, flips: list[tuple[int, int]], cut: int | None, tmp_path_factory: Any
) -> None:
    raw = bytearray(which.read_bytes())
    for at, value in flips:  # never the file header: record headers and data
        raw[24 + (at - 24) % (len(raw) - 24)] = value
    if cut is not None:
        raw = raw[: 24 + cut % (len(raw) - 23)]
    path = tmp_path_factory.mktemp("mut") / "m.pcap"
    path.write_bytes(bytes(raw))
    with pytest.MonkeyPatch.context() as mp:
        res = _same(path, mp)
    event(f"error: {(res['error'] or 'none').split(':')[0]}")


@pytest.mark.parametrize("impl", IMPLS)
def test_close_mid_file(impl: Any) -> None:
    rd = Reader(impl, DATA / "zeek-smtp.pcap")
    first = next(iter(rd.gate))
    rd.gate.close()
    assert list(rd.gate) == []
    rd.close()
    rd = Reader(impl, DATA / "zeek-smtp.pcap")  # a new file: the same gate reads again
    assert rd.datas()[0] == first[2]
    rd.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_head_counts_start_again_when_full(impl: Any, tmp_path: Path) -> None:
    conns = [Conn(cp=40000 + i) for i in range(3)]
    pkts = [c.c2s(k, b"x") for k in range(3) for c in conns]  # A1 B1 C1 A2 B2 C2 A3 ...
    path = _write(tmp_path / "t.pcap", pkts)
    heads, other = flowgate.programs([backdoor_run.HEADS_FILTER_ETHERNET, "not ip"], 1)
    fns = flowgate.bpf_functions()
    fd = os.open(path, os.O_RDONLY)
    try:
        got = {}
        for counts_max in (impl.COUNTS_MAX, 2):
            gate = impl.Gate()
            gate.open(fd, False, False, 65535, 14, 12, 2, heads, other, fns, counts_max)
            got[counts_max] = [d for _, _, d in gate]
    finally:
        os.close(fd)
    assert got[impl.COUNTS_MAX] == [p.data for p in pkts[:6]]  # two heads each way
    # Two keys at most: every new key clears the counts, so nothing is cut.
    assert got[2] == [p.data for p in pkts]
    assert impl.COUNTS_MAX == flowgate.COUNTS_MAX
