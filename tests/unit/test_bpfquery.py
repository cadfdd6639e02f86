"""bulk.bpfquery: libpcap's grammar (precedence, qualifier inheritance, tokens) and
what each primitive requires. Soundness against libpcap itself is in
test_hostindex_sound.py; here the structure is pinned with truth tables."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pcapy
import pytest

from bulk.bpfquery import ALWAYS, Addr4, Port, Proto, requirements, tokenize


@dataclass
class Facts:
    """A trace described by plain sets."""

    v4: set[str] = field(default_factory=set)
    v6: set[str] = field(default_factory=set)
    ports: dict[int, set[int]] = field(default_factory=dict)
    protos: set[int] = field(default_factory=set)
    l3: set[str] = field(default_factory=set)

    def has_addr4(self, value: int, mask: int) -> bool:
        return any(int(ipaddress.IPv4Address(a)) & mask == value for a in self.v4)

    def has_addr6(self, value: int, prefixlen: int) -> bool:
        net = ipaddress.IPv6Network((value, prefixlen))
        return any(ipaddress.IPv6Address(a) in net for a in self.v6)

    def has_port(self, lo: int, hi: int, protos: frozenset[int]) -> bool:
        return any(lo <= p <= hi for proto in protos for p in self.ports.get(proto, ()))

    def has_proto(self, proto: int) -> bool:
        return proto in self.protos

    def has_l3(self, kind: str) -> bool:
        return kind in self.l3


A, B, C = "10.0.0.1", "10.0.0.2", "192.168.7.9"


def holds(expr: str, facts: Facts) -> bool:
    # Only expressions libpcap compiles are ever analysed.
    pcapy.compile(1, 262144, expr, 1, 0xFFFFFFFF)
    return requirements(expr).holds(facts)


def test_and_or_have_equal_precedence_left_to_right() -> None:
    expr = f"host {A} or host {B} and port 80"  # libpcap: (A or B) and 80
    assert holds(expr, Facts(v4={B}, ports={6: {80}}))
    assert not holds(expr, Facts(v4={A}))  # "A or (B and 80)" would hold here
    expr = f"port 80 and host {A} or host {B}"  # (80 and A) or B
    assert holds(expr, Facts(v4={B}))
    assert not holds(expr, Facts(v4={A}))


def test_qualifiers_are_inherited_by_bare_ids() -> None:
    assert not holds("tcp port 80 or 443", Facts(ports={17: {443}}))  # tcp, not udp
    assert holds("tcp port 80 or 443", Facts(ports={6: {443}}))
    assert holds(f"host {A} or {B}", Facts(v4={B}))
    assert not holds(f"host {A} or {B}", Facts(v4={C}))
    assert holds(f"host {A} and not {B}", Facts(v4={A, B}))  # "not B" requires nothing
    assert not holds(f"host {A} and not {B}", Facts(v4={B}))
    assert holds(f"host ({A} or {B}) and port (22 or 80)", Facts(v4={B}, ports={17: {22}}))
    assert not holds(f"host ({A} or {B}) and port (22 or 80)", Facts(v4={B}, ports={6: {23}}))
    # after a parenthesis, the qualifiers in force before it
    assert holds(f"host {A} and (port 80) or {B}", Facts(v4={B}))


def test_negation_and_unknowns_require_nothing() -> None:
    empty = Facts()
    for expr in (
        f"not host {A}",
        f"! (host {A} and port 80)",
        "tcp[13] & 2 != 0",
        "len > 100",
        "ether host 00:11:22:33:44:55",
        "port http",
        "host localhost",
        "greater 10",
        "ip6 protochain 6",
        f"geneve and host {A}",
        f"not vlan and host {A}",
        f"vlan or host {A}",
        f"host {A} or vlan and host {B}",
        "",
    ):
        assert requirements(expr) == ALWAYS, expr
        assert holds(expr, empty) if expr else True


def test_primitives() -> None:
    assert requirements(f"src or dst host {A}") == Addr4(int(ipaddress.IPv4Address(A)), 2**32 - 1)
    assert requirements("net 10.1") == Addr4(0x0A010000, 0xFFFF0000)
    assert requirements("net 192.168.0.0 mask 255.255.0.0") == Addr4(0xC0A80000, 0xFFFF0000)
    assert requirements("udp portrange 100-90") == Port(90, 100, frozenset({17}))
    assert requirements("port 0x50") == Port(80, 80, frozenset({6, 17, 132}))
    assert requirements("port 010") == Port(8, 8, frozenset({6, 17, 132}))
    assert requirements("ip proto 47") == Proto(47)
    assert requirements("proto \\udp") == Proto(17)
    assert holds("ip6 net 2001:db8::/32", Facts(v6={"2001:db8:5::1"}))
    assert not holds("ip6 net 2001:db8::/32", Facts(v6={"2001:db9::1"}))
    assert holds(f"vlan 100 and host {A} and tcp", Facts(v4={A}, protos={6}))
    assert not holds(f"vlan 100 and host {A} and tcp", Facts(v4={A}, protos={17}))
    assert holds("arp or ip6", Facts(l3={"ip6"}))
    assert not holds("arp or ip6", Facts(l3={"ip"}))


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("portrange 80-90", ["PORTRANGE", "ID"]),
        ("hosts and host", ["ID", "AND", "HOST"]),
        ("icmp[icmptype] = icmp-echo", ["ICMP", "OP", "NUM", "OP", "OP", "NUM"]),
        ("tcp[tcpflags] & tcp-syn != 0", ["TCP", "OP", "NUM", "OP", "OP", "NUM", "OP", "NUM"]),
        ("host ::ffff:1.2.3.4 && !udp", ["HOST", "HID6", "AND", "NOT", "UDP"]),
        ("ether host aa:bb:cc:dd:ee:ff||net 10", ["LINK", "HOST", "EID", "OR", "NET", "NUM"]),
        ("HOST 1.2.3.4", ["ID", "HID"]),  # keywords are case-sensitive in libpcap
    ],
)  # fmt: skip
def test_tokens(text: str, kinds: list[str]) -> None:
    assert [t.kind for t in tokenize(text)] == kinds
