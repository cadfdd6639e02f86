"""Index skipping is sound: checked against libpcap itself.

For random packets (addresses and ports from small pools, random VLAN, QinQ,
MPLS and PPPoE encapsulation, IPv4 options and fragments, IPv6 extension
headers, ARP, truncation, five link types) and random filter shapes (hosts,
nets, ports, protocols, shifting keywords, relations, and/or/not with and
without parentheses, qualifier inheritance), whenever libpcap's compiled
program accepts a packet, the requirement computed by :mod:`bulk.bpfquery`
must hold on the index of that packet alone. A failure here is a filter for
which ``bulk extract`` would wrongly skip a trace.
"""

from __future__ import annotations

import ipaddress
import struct

import pcapy
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bulk.archive.hostindex import index_packets
from bulk.bpfquery import ALWAYS, requirements

V4 = ["10.0.0.1", "10.0.0.2", "10.1.2.3", "192.168.1.1", "192.168.1.200", "172.16.5.4"]
V4_ABSENT = ["10.0.0.3", "192.168.2.1", "8.8.8.8"]
V6 = ["2001:db8::1", "2001:db8::2", "fe80::1", "2001:db8:1::5"]
V6_ABSENT = ["2001:db8::99", "::1"]
PORTS = [22, 25, 53, 80, 443, 8080, 6667, 1234]
PROTOS = [6, 17, 1, 132, 47, 58, 2]
LINKTYPES = {"ether": 1, "sll": 113, "sll2": 276, "raw": 101, "null": 0}
DLT = {101: 12}  # pcapy.compile wants the DLT number, not the file's LINKTYPE

v4 = st.sampled_from(V4)
v6 = st.sampled_from(V6)
port = st.sampled_from(PORTS)


def a4(s: str) -> bytes:
    return ipaddress.IPv4Address(s).packed


def a6(s: str) -> bytes:
    return ipaddress.IPv6Address(s).packed


@st.composite
def l4(draw: st.DrawFn, proto: int) -> bytes:
    if proto in (6, 17, 132):
        head = struct.pack("!HH", draw(port), draw(port))
        flags = draw(st.sampled_from([0x02, 0x10, 0x12, 0x18]))
        return head + struct.pack("!IIBB", 1, 2, 0x50, flags) + bytes(draw(st.integers(0, 40)))
    return bytes(draw(st.integers(0, 30)))


@st.composite
def ipv4(draw: st.DrawFn) -> tuple[int, bytes]:
    proto = draw(st.sampled_from(PROTOS))
    ihl = draw(st.sampled_from([5, 5, 5, 6, 0, 3]))  # bad IHLs: BPF reads there anyway
    frag = draw(st.sampled_from([0, 0, 0, 0x2000, 0x0010]))
    payload = draw(l4(proto))
    opts = bytes(max(0, ihl - 5) * 4)
    total = 20 + len(opts) + len(payload)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0, a4(draw(v4)), a4(draw(v4))
    )
    return 0x0800, hdr + opts + payload


@st.composite
def ipv6(draw: st.DrawFn) -> tuple[int, bytes]:
    final = draw(st.sampled_from([6, 17, 58, 132]))
    ext = draw(st.sampled_from([None, 0, 44, 60]))
    body = draw(l4(final))
    if ext is None:
        nh, exthdr = final, b""
    elif ext == 44:
        nh, exthdr = 44, struct.pack("!BBHI", final, 0, 0, 7)
    else:
        nh, exthdr = ext, struct.pack("!BB6s", final, 0, bytes(6))
    payload = exthdr + body
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, a6(draw(v6)), a6(draw(v6)))
    return 0x86DD, hdr + payload


@st.composite
def arp(draw: st.DrawFn) -> tuple[int, bytes]:
    et = draw(st.sampled_from([0x0806, 0x8035]))
    body = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x02" * 6, a4(draw(v4)), bytes(6), a4(draw(v4))
    )
    return et, body


@st.composite
def other(draw: st.DrawFn) -> tuple[int, bytes]:
    return draw(st.sampled_from([0x88CC, 0x9000, 0x0842])), draw(st.binary(max_size=60))


l3 = st.one_of(ipv4(), ipv4(), ipv6(), arp(), other())


@st.composite
def encapsulated(draw: st.DrawFn, always: bool = False) -> tuple[int, bytes]:
    """(outer ethertype, bytes after it): L3 possibly (``always``: surely) inside
    VLAN/MPLS/PPPoE."""
    et, body = draw(st.one_of(ipv4(), ipv6()) if always else l3)
    if et in (0x0800, 0x86DD) and draw(st.integers(0, 1 if always else 4)) == 0:
        labels = draw(st.integers(1, 2))
        stack = b""
        for i in range(labels):
            bos = 1 if i == labels - 1 else 0
            stack += struct.pack("!I", (draw(st.integers(0, 20)) << 12) | (bos << 8) | 64)
        et, body = 0x8847, stack + body
    elif et in (0x0800, 0x86DD) and draw(st.integers(0, 6)) == 0:
        ppp = 0x0021 if et == 0x0800 else 0x0057
        body = struct.pack("!BBHHH", 0x11, 0, 7, len(body) + 2, ppp) + body
        et = 0x8864
    tags = [1, 1, 2] if always and et in (0x0800, 0x86DD) else [0, 0, 0, 1, 1, 2]
    for _ in range(draw(st.sampled_from(tags))):
        tpid = draw(st.sampled_from([0x8100, 0x88A8, 0x9100]))
        vid = draw(st.sampled_from([0, 100, 201]))
        body = struct.pack("!HH", vid, et) + body
        et = tpid
    return et, body


@st.composite
def packet(draw: st.DrawFn, linktype: int) -> bytes:
    if linktype == 1:
        et, body = draw(encapsulated())
        data = b"\x00\x11\x22\x33\x44\x55" * 2 + struct.pack("!H", et) + body
    elif linktype == 113:
        et, body = draw(encapsulated())
        data = struct.pack("!HHH8sH", 0, 1, 6, bytes(8), et) + body
    elif linktype == 276:
        et, body = draw(encapsulated())
        data = struct.pack("!HHIHBB8s", et, 0, 2, 1, 0, 6, bytes(8)) + body
    else:
        et, body = draw(st.one_of(ipv4(), ipv6()))
        if linktype == 0:
            family = 2 if et == 0x0800 else draw(st.sampled_from([24, 28, 30]))
            data = struct.pack("<I", family) + body
        else:
            data = body
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


# -- filters ------------------------------------------------------------------------------

ATOMS = [
    "host {a}",
    "src host {a}",
    "dst host {a}",
    "host {a} or {b}",
    "ip host {a}",
    "arp host {a}",
    "host {x}",
    "net 10.0.0.0/8",
    "net 192.168.1.0/24",
    "net 10.1",
    "net 192.168.1.0 mask 255.255.255.0",
    "src net 172.16.0.0/12",
    "host {a6}",
    "ip6 host {a6}",
    "ip6 net 2001:db8::/32",
    "host {x6}",
    "port {p}",
    "tcp port {p}",
    "udp port {p}",
    "sctp port {p}",
    "src port {p}",
    "tcp dst port {p} or {q}",
    "portrange 20-30",
    "udp portrange 50-60",
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "sctp",
    "ip",
    "ip6",
    "arp",
    "rarp",
    "ip proto 47",
    "ip6 proto 58",
    "proto 17",
    "tcp[13] & 2 != 0",
    "len > 100",
    "greater 60",
    "ether host 00:11:22:33:44:55",
    "vlan",
    "vlan 100",
    "mpls",
    "pppoes",
    "src or dst host {a}",
    "(ip[0] & 0xf) > 5",
    # encapsulation keywords before the primitives they shift
    "vlan and host {a}",
    "vlan and vlan and host {a}",
    "vlan 100 and tcp port {p}",
    "vlan and ip6 and host {a6}",
    "vlan and arp",
    "mpls and host {a}",
    "mpls and mpls and udp",
    "vlan and mpls and host {a}",
    "pppoes and host {a}",
    "pppoes and ip6 and tcp",
]


@st.composite
def atom(draw: st.DrawFn) -> str:
    template = draw(st.sampled_from(ATOMS))
    return template.format(
        a=draw(v4),
        b=draw(v4),
        x=draw(st.sampled_from(V4_ABSENT)),
        a6=draw(v6),
        x6=draw(st.sampled_from(V6_ABSENT)),
        p=draw(port),
        q=draw(port),
    )


def combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, children).map(lambda t: f"({t[0]}) and ({t[1]})"),
        st.tuples(children, children).map(lambda t: f"({t[0]}) or ({t[1]})"),
        st.tuples(children, children).map(lambda t: f"{t[0]} and {t[1]}"),
        st.tuples(children, children).map(lambda t: f"{t[0]} or {t[1]}"),
        children.map(lambda c: f"not ({c})"),
        children.map(lambda c: f"not {c}"),
        children.map(lambda c: f"!{c}"),
    )


filters = st.recursive(atom(), combine, max_leaves=5)


def compiled(expr: str, linktype: int) -> pcapy.BPFProgram | None:
    try:
        return pcapy.compile(DLT.get(linktype, linktype), 262144, expr, 1, 0xFFFFFFFF)
    except pcapy.PcapError:
        return None


@pytest.mark.parametrize("lt_name", sorted(LINKTYPES))
@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data(), expr=filters)
def test_requirement_holds_for_every_accepted_packet(
    lt_name: str, data: st.DataObject, expr: str
) -> None:
    linktype = LINKTYPES[lt_name]
    prog = compiled(expr, linktype)
    assume(prog is not None)
    req = requirements(expr)
    pkts = data.draw(st.lists(packet(linktype), min_size=1, max_size=12))
    for pkt in pkts:
        if prog.filter(pkt):
            index = index_packets([(linktype, pkt)])
            assert req.holds(index), (expr, req.describe(), pkt.hex())


SHIFTING = [
    "vlan and host {a}",
    "vlan and vlan and host {a}",
    "vlan and (host {a} or port {p})",
    "vlan and tcp port {p}",
    "vlan and ip6 and host {a6}",
    "vlan and net 10.0.0.0/8",
    "mpls and host {a}",
    "mpls and mpls and port {p}",
    "vlan and mpls and host {a}",
    "vlan and pppoes and host {a}",
    "pppoes and host {a}",
    "pppoes and ip6 host {a6}",
    "mpls and ip6 and tcp",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), template=st.sampled_from(SHIFTING))
def test_requirement_holds_inside_encapsulations(data: st.DataObject, template: str) -> None:
    expr = template.format(a=data.draw(v4), a6=data.draw(v6), p=data.draw(port))
    prog = compiled(expr, 1)
    assert prog is not None, expr
    req = requirements(expr)
    assert req != ALWAYS, expr
    for _ in range(8):
        et, body = data.draw(encapsulated(always=True))
        pkt = b"\x00\x11\x22\x33\x44\x55" * 2 + struct.pack("!H", et) + body
        if prog.filter(pkt):
            assert req.holds(index_packets([(1, pkt)])), (expr, pkt.hex())


def test_shifted_offsets_outside_a_conjunction_require_nothing() -> None:
    """``not vlan and host X``: libpcap reads "host X" 4 bytes further on, inside an
    untagged packet's TCP ports. The index never holds that value, so the shifting
    keyword anywhere but a top-level conjunction must make the filter require nothing."""
    x = "0.80.31.144"  # the bytes of ports 80 -> 8080, read as an address
    pkt = (
        b"\x00" * 12
        + b"\x08\x00"
        + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0x0800, 1, 0, 64, 6, 0, a4(V4[0]), a4(V4[1]))
        + struct.pack("!HHIIBBHHH", 80, 8080, 1, 2, 0x50, 0x02, 0, 0, 0)
    )
    for expr in (f"not vlan and host {x}", f"host {V4[0]} or vlan and host {x}"):
        prog = compiled(expr, 1)
        assert prog is not None and prog.filter(pkt), expr  # libpcap does match it
        assert requirements(expr).holds(index_packets([(1, pkt)])), expr
    assert not requirements(f"vlan and host {x}").holds(index_packets([(1, pkt)]))


def _eth(et: int, body: bytes) -> bytes:
    return b"\x00\x11\x22\x33\x44\x55" * 2 + struct.pack("!H", et) + body


_TCP = struct.pack("!HHIIBBHHH", 1234, 80, 1, 2, 0x50, 0x02, 0, 0, 0)
_IP4 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, a4(V4[0]), a4(V4[1])) + _TCP
_FRAG6 = struct.pack("!IHBB16s16s", 0x60000000, 28, 44, 64, a6(V6[0]), a6(V6[1]))
_ARP = struct.pack("!HHBBH6s4s6s4s", 1, 0x800, 6, 4, 1, bytes(6), a4(V4[2]), bytes(6), a4(V4[3]))
_QINQ = struct.pack("!HHHH", 1, 0x8100, 2, 0x800)
CORNERS = [
    # libpcap's "tcp" accepts an IPv6 fragment header followed by TCP
    ("tcp", _eth(0x86DD, _FRAG6 + struct.pack("!BBHI", 6, 0, 0, 7) + _TCP)),
    ("ip6 and tcp", _eth(0x86DD, _FRAG6 + struct.pack("!BBHI", 6, 0, 0, 7) + _TCP)),
    # "host" also matches ARP's protocol addresses
    (f"host {V4[2]}", _eth(0x0806, _ARP)),
    # inside QinQ, MPLS and PPPoE
    (f"vlan and vlan and host {V4[1]}", _eth(0x88A8, _QINQ + _IP4)),
    (f"mpls and host {V4[0]}", _eth(0x8847, struct.pack("!I", (16 << 12) | 0x100 | 64) + _IP4)),
    (f"pppoes and host {V4[0]}", _eth(0x8864, struct.pack("!BBHHH", 0x11, 0, 7, 42, 0x21) + _IP4)),
    # ports of an IPv4 header with options
    ("tcp port 80", _eth(0x800, bytes([0x46]) + _IP4[1:20] + bytes(4) + _TCP)),
]


@pytest.mark.parametrize(("expr", "pkt"), CORNERS, ids=[c[0] for c in CORNERS])
def test_libpcap_corner_cases(expr: str, pkt: bytes) -> None:
    prog = compiled(expr, 1)
    assert prog is not None and prog.filter(pkt), "libpcap accepts the packet"
    req = requirements(expr)
    assert req != ALWAYS
    assert req.holds(index_packets([(1, pkt)]))


def test_the_property_is_not_vacuous() -> None:
    """The analysis does skip: requirements are not all trivial and do fail on absent hosts."""
    pkt = (
        b"\x00" * 12
        + b"\x08\x00"
        + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, a4(V4[0]), a4(V4[1]))
        + struct.pack("!HHIIBBHHH", 1234, 80, 1, 2, 0x50, 0x02, 0, 0, 0)
    )
    index = index_packets([(1, pkt)])
    assert requirements(f"host {V4[0]} and port 80").holds(index)
    assert not requirements(f"host {V4_ABSENT[0]}").holds(index)
    assert not requirements("udp").holds(index)
    assert not requirements("tcp port 22 or 25").holds(index)
    assert not requirements("vlan and host 8.8.8.8").holds(index)
    assert requirements("not host 10.0.0.1").holds(index)
