"""The L2-L4 decoder (bulk.decode): encapsulations, lengths, fragments, garbage."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk.decode import (
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    addr_text,
    decode,
    decode_fields,
    decode_general,
)
from bulk.errors import TraceError
from bulk.trace import open_trace
from bulk.trace.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    Packet,
)
from tests.pktbuild import ACK, PSH, SYN, ether, ipv4, ipv6, tcp_header, udp_header

TCP_SEG = tcp_header(1234, 80, 0xFFFFFFF0, 77, ACK | PSH, win=999) + b"hello"
V4 = ipv4("10.0.0.1", "10.0.0.2", 6, TCP_SEG)
V6 = ipv6("2001:db8::1", "2001:db8::2", 6, TCP_SEG)


def pkt(data: bytes, linktype: int = LINKTYPE_ETHERNET, wirelen: int | None = None) -> Packet:
    return Packet(42, len(data) if wirelen is None else wirelen, linktype, data)


def check_tcp(d: object, ipver: int = 4) -> None:
    assert d is not None
    assert d.ipver == ipver and d.proto == 6  # type: ignore[attr-defined]
    assert (d.sport, d.dport) == (1234, 80)  # type: ignore[attr-defined]
    assert (d.seq, d.ack, d.flags, d.win) == (0xFFFFFFF0, 77, ACK | PSH, 999)  # type: ignore[attr-defined]
    assert d.payload == b"hello" and d.missing == 0  # type: ignore[attr-defined]


def test_ethernet_ipv4_tcp() -> None:
    d = decode(pkt(ether(V4, 0x0800)))
    check_tcp(d)
    assert d is not None
    assert addr_text(d.src) == "10.0.0.1" and addr_text(d.dst) == "10.0.0.2"
    assert d.vlan == -1 and d.frag == FRAG_NONE and d.ts_ns == 42


def test_ethernet_trailer_is_not_payload() -> None:
    d = decode(pkt(ether(V4, 0x0800) + b"\0" * 6 + b"F5TRAILER"))
    check_tcp(d)


def test_snaplen_cut_payload_is_missing_not_data() -> None:
    frame = ether(V4, 0x0800)
    d = decode(pkt(frame[:-3], wirelen=len(frame)))
    assert d is not None and d.payload == b"he" and d.missing == 3
    d = decode(pkt(frame[:54], wirelen=len(frame)))  # headers only
    assert d is not None and d.payload == b"" and d.missing == 5


def test_header_cut_by_snaplen_is_none() -> None:
    frame = ether(V4, 0x0800)
    assert decode(pkt(frame[:40], wirelen=len(frame))) is None


def test_ipv4_options_and_zero_total_length_offload() -> None:
    check_tcp(
        decode(pkt(ether(ipv4("10.0.0.1", "10.0.0.2", 6, TCP_SEG, options=b"\x01" * 8), 0x0800)))
    )
    check_tcp(decode(pkt(ether(ipv4("10.0.0.1", "10.0.0.2", 6, TCP_SEG, total_length=0), 0x0800))))


def test_ipv4_fragments() -> None:
    first = ipv4("10.0.0.1", "10.0.0.2", 6, TCP_SEG, more_fragments=True)
    d = decode(pkt(ether(first, 0x0800)))
    assert d is not None and d.frag == FRAG_FIRST and d.sport == 1234
    later = ipv4("10.0.0.1", "10.0.0.2", 6, b"rest-of-it", frag_offset=1480)
    d = decode(pkt(ether(later, 0x0800)))
    assert d is not None and d.frag == FRAG_LATER and (d.sport, d.dport) == (0, 0)
    assert d.payload == b"rest-of-it"


@pytest.mark.parametrize(
    ("vlans", "tpid"),
    [((7,), 0x8100), ((201, 200), 0x88A8), ((201, 200), 0x8100), ((5, 6, 7), 0x9100)],
)
def test_vlan_stacks(vlans: tuple[int, ...], tpid: int) -> None:
    d = decode(pkt(ether(V4, 0x0800, vlans=vlans, tpid=tpid)))
    check_tcp(d)
    assert d is not None and d.vlan == vlans[-1]


def test_mpls_label_stack_and_pseudowire() -> None:
    labels = struct.pack("!I", (100 << 12) | 255) + struct.pack("!I", (29 << 12) | 0x100 | 255)
    check_tcp(decode(pkt(ether(labels + V4, 0x8847))))
    check_tcp(decode(pkt(ether(labels + V6, 0x8847))), ipver=6)
    inner = ether(V4, 0x0800)
    pw = struct.pack("!I", (16 << 12) | 0x100 | 64) + b"\0\0\0\0" + inner
    check_tcp(decode(pkt(ether(pw, 0x8847))))


def test_pppoe_session() -> None:
    body = struct.pack("!BBHHH", 0x11, 0, 1, len(V4) + 2, 0x0021) + V4
    check_tcp(decode(pkt(ether(body, 0x8864))))


def test_linux_sll_and_sll2() -> None:
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\0" * 8, 0x0800)
    check_tcp(decode(pkt(sll + V4, LINKTYPE_LINUX_SLL)))
    sll2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 1, 1, 0, 6, b"\0" * 8)
    check_tcp(decode(pkt(sll2 + V6, LINKTYPE_LINUX_SLL2)), ipver=6)


def test_raw_null_loop() -> None:
    check_tcp(decode(pkt(V4, LINKTYPE_RAW)))
    check_tcp(decode(pkt(V6, LINKTYPE_RAW)), ipver=6)
    check_tcp(decode(pkt(V4, LINKTYPE_IPV4)))
    check_tcp(decode(pkt(V6, LINKTYPE_IPV6)), ipver=6)
    check_tcp(decode(pkt(struct.pack("<I", 2) + V4, LINKTYPE_NULL)))
    check_tcp(decode(pkt(struct.pack("<I", 30) + V6, LINKTYPE_NULL)), ipver=6)
    check_tcp(decode(pkt(struct.pack("!I", 2) + V4, LINKTYPE_LOOP)))


def test_ipv6_extension_headers_and_fragments() -> None:
    hop = (0, b"\x01\x04\0\0\0\0")  # PadN option
    dst_opts = (60, b"\x01\x0c" + b"\0" * 12)
    d = decode(
        pkt(ether(ipv6("2001:db8::1", "2001:db8::2", 6, TCP_SEG, ext=[hop, dst_opts]), 0x86DD))
    )
    check_tcp(d, ipver=6)
    assert d is not None and addr_text(d.src) == "2001:db8::1"
    first = (44, struct.pack("!HI", 1, 7))  # offset 0, M=1
    d = decode(pkt(ether(ipv6("2001:db8::1", "2001:db8::2", 6, TCP_SEG, ext=[first]), 0x86DD)))
    assert d is not None and d.frag == FRAG_FIRST and d.sport == 1234
    later = (44, struct.pack("!HI", 185 << 3, 7))
    d = decode(pkt(ether(ipv6("2001:db8::1", "2001:db8::2", 6, b"more", ext=[later]), 0x86DD)))
    assert d is not None and d.frag == FRAG_LATER and d.sport == 0


def test_udp_and_icmp() -> None:
    udp = udp_header(5353, 53, 3) + b"abc"
    d = decode(pkt(ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp), 0x0800)))
    assert d is not None and (d.proto, d.sport, d.dport, d.payload) == (17, 5353, 53, b"abc")
    icmp = bytes([8, 0, 0, 0]) + b"\0\1\0\1ping"
    d = decode(pkt(ether(ipv4("10.0.0.1", "10.0.0.2", 1, icmp), 0x0800)))
    assert d is not None and (d.proto, d.sport, d.dport) == (1, 8, 0)


def test_non_ip_is_none() -> None:
    assert decode(pkt(ether(b"\0" * 28, 0x0806))) is None  # ARP
    assert decode(pkt(b"\x00\x01", LINKTYPE_ETHERNET)) is None
    assert decode(pkt(V4, 12345)) is None  # unknown link type


def test_syn_flag_and_tcp_options() -> None:
    seg = tcp_header(1, 2, 3, 0, SYN, options=b"\x02\x04\x05\xb4")
    d = decode(pkt(ether(ipv4("1.2.3.4", "5.6.7.8", 6, seg), 0x0800)))
    assert d is not None and d.flags == SYN and d.payload == b""


LINKTYPES = [
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_LOOP,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
]


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200), lt=st.sampled_from(LINKTYPES), wire=st.integers(0, 400))
def test_garbage_never_raises(data: bytes, lt: int, wire: int) -> None:
    decode(Packet(0, wire, lt, data))


GOOD = [
    ether(V4, 0x0800),
    ether(V6, 0x86DD),
    ether(V4, 0x0800, vlans=(1, 2)),
    ether(struct.pack("!I", (29 << 12) | 0x100 | 255) + V4, 0x8847),
    ether(ipv6("::1", "::2", 6, TCP_SEG, ext=[(0, b"\x01\x04\0\0\0\0")]), 0x86DD),
]


@settings(max_examples=300, deadline=None)
@given(
    frame=st.sampled_from(GOOD),
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
)
def test_cut_or_corrupted_frames_never_raise(
    frame: bytes, cut: int, flips: list[tuple[int, int]]
) -> None:
    b = bytearray(frame[: cut % (len(frame) + 1)])
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    d = decode(Packet(0, len(frame), LINKTYPE_ETHERNET, bytes(b)))
    if d is not None:
        assert d.missing >= 0 and len(d.payload) <= len(b)


SHORTCUT = [
    *GOOD,
    ether(V4, 0x0800, vlans=(7,)),
    ether(ipv4("10.0.0.1", "10.0.0.2", 6, tcp_header(1, 2, 3, 4, SYN)), 0x0800, vlans=(4095,)),
    ether(ipv6("2001:db8::1", "2001:db8::2", 6, tcp_header(1, 2, 3, 4, SYN)), 0x86DD),
    ether(ipv6("2001:db8::1", "2001:db8::2", 6, TCP_SEG), 0x86DD, vlans=(9,)),
    ether(ipv6("::1", "::2", 17, udp_header(53, 53, 1) + b"x"), 0x86DD),
]


@settings(max_examples=600, deadline=None)
@given(
    frame=st.sampled_from(SHORTCUT),
    cut=st.integers(0, 200),
    wire=st.integers(-40, 200),
    flips=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=3),
)
def test_shortcuts_equal_the_general_decoder(
    frame: bytes, cut: int, wire: int, flips: list[tuple[int, int]]
) -> None:
    """decode_fields' one-unpack paths (Ethernet + IPv4 + TCP untagged or under
    one 802.1Q tag, Ethernet + IPv6 + TCP) give what the general decoder gives,
    whatever the lengths, cuts and header bytes."""
    b = bytearray(frame[: cut % (len(frame) + 1)])
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    data = bytes(b)
    wirelen = max(len(data), len(frame) + wire) if wire >= 0 else len(frame) + wire
    assert decode_fields(7, wirelen, LINKTYPE_ETHERNET, data) == decode_general(
        7, wirelen, LINKTYPE_ETHERNET, data
    )


def test_shortcuts_equal_the_general_decoder_on_the_corpus() -> None:
    data_dir = Path(__file__).resolve().parents[1] / "data"
    n = 0
    for path in sorted(data_dir.iterdir()):
        if not path.name.endswith((".pcap", ".pcapng")):
            continue
        try:
            with open_trace(str(path)) as reader:
                for p in reader:
                    assert decode_fields(p.ts_ns, p.wirelen, p.linktype, p.data) == (
                        decode_general(p.ts_ns, p.wirelen, p.linktype, p.data)
                    ), path.name
                    n += 1
        except TraceError:
            pass
    assert n > 1000
