"""Fast L2-L4 decoding of one captured packet.

``decode(pkt)`` turns a :class:`bulk.trace.packet.Packet` into a
:class:`Decoded` tuple holding the fields the flow table and the analyzers
need: addresses, ports, TCP sequence numbers and flags, and the L4 payload.
It returns ``None`` for anything it cannot use (not IP, cut before the
transport header, garbage) and never raises on packet contents.

Link layers: Ethernet (with any stack of 802.1Q / 802.1ad / QinQ tags, MPLS
label stacks, PPPoE session frames), Linux cooked capture v1 (SLL) and v2
(SLL2), raw IP (RAW, IPV4, IPV6) and BSD loopback (NULL, LOOP).

Lengths, in the order they are trusted:

* the IP header's length (IPv4 total length, IPv6 payload length) decides
  where the packet ends, so Ethernet trailer padding is never payload;
* the wire length caps it when the IP length is larger (corrupt header) or
  zero (segmentation offload: the capture saw a super-segment);
* the captured bytes decide what is present: payload bytes that were on the
  wire but cut by the snapshot length are reported in ``missing``, never as
  data, so reassembly records them as a gap.

IPv4 fragments: the first fragment carries the transport header and is
decoded normally with ``frag == FRAG_FIRST``; later fragments have no ports
(``sport == dport == 0``), ``frag == FRAG_LATER`` and their IP payload in
``payload``. Fragments are not reassembled.

Speed: this runs once per packet. It uses precompiled ``struct`` unpackers
on the packet bytes, one function with local variables, and builds one tuple
per packet.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

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

# TCP flag bits.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# IP protocol numbers.
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

# Decoded.frag values.
FRAG_NONE = 0
FRAG_FIRST = 1  # first fragment of a fragmented datagram (has the L4 header)
FRAG_LATER = 2  # a later fragment: no L4 header, no ports

# Other DLT numbers that carry raw IP on some systems (OpenBSD, old BSDs).
_LINKTYPE_RAW_ALT = (12, 14)

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_ETH_MPLS = frozenset((0x8847, 0x8848))
_ETH_PPPOE = 0x8864

# IPv6 extension headers that are skipped to reach the transport header.
_V6_EXT = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
_V6_FRAG = 44
_V6_AH = 51

_MAX_LABELS = 16  # MPLS / VLAN stack depth we follow

_u16 = struct.Struct("!H").unpack_from
_ipv4 = struct.Struct("!BBHHHBB").unpack_from  # vhl, tos, len, id, frag, ttl, proto
_tcp = struct.Struct("!HHIIBBH").unpack_from  # sport dport seq ack off flags win
_udp = struct.Struct("!HH").unpack_from
_u32le = struct.Struct("<I").unpack_from
_u32be = struct.Struct("!I").unpack_from
# Ethernet + IPv4 without options + TCP, in one unpack (the common packet):
# ethertype, vhl, total length, fragment word, protocol, src, dst, sport,
# dport, seq, ack, data offset, flags, window.
_eth_ip4_tcp = struct.Struct("!12xHBxH2xHxB2x4s4sHHIIBBH").unpack_from
# Ethernet + IPv6 (TCP right after the fixed header) + TCP: ethertype, version
# and traffic class, payload length, next header, src, dst, sport, dport, seq,
# ack, data offset, flags, window.
_eth_ip6_tcp = struct.Struct("!12xHB3xHBx16s16sHHIIBBH").unpack_from
_ETH_8021Q = 0x8100


class Decoded(NamedTuple):
    """The L3/L4 fields of one packet.

    ``src``/``dst`` are the packed addresses (4 bytes for IPv4, 16 for IPv6).
    For TCP and UDP ``sport``/``dport`` are the ports; for ICMP and ICMPv6
    they are the message type and code; otherwise 0. ``flags``, ``seq``,
    ``ack`` and ``win`` are TCP fields (0 for other protocols). ``payload``
    holds the captured L4 payload (after the TCP/UDP/ICMP header, before any
    link trailer); ``missing`` counts payload bytes that were on the wire but
    not captured. ``vlan`` is the innermost 802.1Q id, or -1 when untagged.
    """

    ts_ns: int
    wirelen: int
    ipver: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    flags: int
    seq: int
    ack: int
    win: int
    payload: bytes
    missing: int
    frag: int
    vlan: int


_new = tuple.__new__


def decode(pkt: Packet) -> Decoded | None:
    """Decode ``pkt``; ``None`` when it is not a usable IPv4/IPv6 packet."""
    return decode_fields(pkt[0], pkt[1], pkt[2], pkt[3])


def decode_fields(ts_ns: int, wirelen: int, linktype: int, data: bytes) -> Decoded | None:
    """:func:`decode` on the unpacked fields of a Packet (saves a tuple on hot paths).

    The common packets (Ethernet, untagged or under one 802.1Q tag, IPv4
    without options; untagged IPv6 with TCP right after the fixed header) are
    decoded here in one unpack each; everything else, and anything unusual
    about these, by :func:`decode_general`, with the same result."""
    n = len(data)
    if linktype == LINKTYPE_ETHERNET and n >= 54:
        et, vhl, tot, fragw, proto, src, dst, sport, dport, seq, ack, doff, flags, win = (
            _eth_ip4_tcp(data, 0)
        )
        base = 14
        vlan = -1
        if et == _ETH_8021Q and n >= 58:
            et, vhl, tot, fragw, proto, src, dst, sport, dport, seq, ack, doff, flags, win = (
                _eth_ip4_tcp(data, 4)
            )
            base = 18
            vlan = ((data[14] << 8) | data[15]) & 0x0FFF
        if et == _ETH_IPV4 and vhl == 0x45 and proto == PROTO_TCP and not fragw & 0x3FFF:
            wire_l3 = wirelen - base
            if tot == 0 or tot > wire_l3:
                tot = wire_l3
            end = base + tot
            l4_min = base + 40  # the TCP header's end at the least
            dstart = base + 20 + ((doff >> 4) << 2)
            if end < l4_min or dstart < l4_min or dstart > end:
                return None
            if end <= n:
                payload = data[dstart:end] if end > dstart else b""
                missing = 0
            elif n > dstart:
                payload = data[dstart:n]
                missing = end - n
            else:
                payload = b""
                missing = end - dstart
            return _new(
                Decoded,
                (ts_ns, wirelen, 4, PROTO_TCP, src, dst, sport, dport, flags, seq, ack, win,
                 payload, missing, FRAG_NONE, vlan),
            )  # fmt: skip
        if et == _ETH_IPV6 and base == 14 and n >= 74:
            _, vtc, plen, nh, src, dst, sport, dport, seq, ack, doff, flags, win = _eth_ip6_tcp(
                data, 0
            )
            if vtc >> 4 == 6 and nh == PROTO_TCP:
                wire_l3 = wirelen - 14
                if plen == 0 or plen + 40 > wire_l3:  # jumbogram / offload / bogus
                    plen = wire_l3 - 40
                    if plen < 0:
                        return None
                end = 54 + plen
                dstart = 54 + ((doff >> 4) << 2)
                if end < 74 or dstart < 74 or dstart > end:
                    return None
                if end <= n:
                    payload = data[dstart:end] if end > dstart else b""
                    missing = 0
                elif n > dstart:
                    payload = data[dstart:n]
                    missing = end - n
                else:
                    payload = b""
                    missing = end - dstart
                return _new(
                    Decoded,
                    (ts_ns, wirelen, 6, PROTO_TCP, src, dst, sport, dport, flags, seq, ack, win,
                     payload, missing, FRAG_NONE, -1),
                )  # fmt: skip
    return decode_general(ts_ns, wirelen, linktype, data)


def decode_general(ts_ns: int, wirelen: int, linktype: int, data: bytes) -> Decoded | None:
    """:func:`decode_fields` without its shortcuts for the common packets (the
    reference the tests hold them to)."""
    n = len(data)
    vlan = -1
    try:
        # ---- link layer: find the L3 offset and the ethertype ------------
        if linktype == LINKTYPE_ETHERNET:
            off = 14
            if n < 14:
                return None
            etype = (data[12] << 8) | data[13]
            if etype != _ETH_IPV4:
                etype, off, vlan = _ether_next(data, etype, 14)
        elif linktype == LINKTYPE_LINUX_SLL:
            if n < 16:
                return None
            etype, off, vlan = _ether_next(data, _u16(data, 14)[0], 16)
        elif linktype == LINKTYPE_LINUX_SLL2:
            if n < 20:
                return None
            etype, off, vlan = _ether_next(data, _u16(data, 0)[0], 20)
        elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) or (
            linktype in _LINKTYPE_RAW_ALT
        ):
            off = 0
            etype = _by_version(data, 0)
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            off = 4
            etype = _by_version(data, 4)
        else:
            return None

        # ---- network layer -----------------------------------------------
        if etype == _ETH_IPV4:
            if n < off + 20:
                return None
            vhl, _tos, tot, _ident, fragw, _ttl, proto = _ipv4(data, off)
            if vhl >> 4 != 4:
                return None
            hl = (vhl & 15) << 2
            if hl < 20:
                return None
            wire_l3 = wirelen - off
            if tot == 0 or tot > wire_l3:  # TSO super-segment or bogus length
                tot = wire_l3
            if tot < hl:
                return None
            l4 = off + hl
            end = off + tot
            if n < l4:
                return None
            src = data[off + 12 : off + 16]
            dst = data[off + 16 : off + 20]
            ipver = 4
            frag = FRAG_NONE
            if fragw & 0x3FFF:  # MF set or offset != 0
                frag = FRAG_LATER if fragw & 8191 else FRAG_FIRST
        elif etype == _ETH_IPV6:
            if n < off + 40 or data[off] >> 4 != 6:
                return None
            plen = _u16(data, off + 4)[0]
            proto = data[off + 6]
            wire_l3 = wirelen - off
            if plen == 0 or plen + 40 > wire_l3:  # jumbogram / offload / bogus
                plen = wire_l3 - 40
                if plen < 0:
                    return None
            end = off + 40 + plen
            src = data[off + 8 : off + 24]
            dst = data[off + 24 : off + 40]
            ipver = 6
            frag = FRAG_NONE
            l4 = off + 40
            hops = 0
            while proto in _V6_EXT or proto in (_V6_FRAG, _V6_AH):
                hops += 1
                if l4 + 8 > n or l4 + 8 > end or hops > 16:
                    return None
                nxt = data[l4]
                if proto == _V6_FRAG:
                    fo = _u16(data, l4 + 2)[0]
                    if fo & 0xFFF8:
                        frag = FRAG_LATER
                    elif fo & 1:
                        frag = FRAG_FIRST
                    l4 += 8
                elif proto == _V6_AH:
                    l4 += (data[l4 + 1] + 2) << 2
                else:
                    l4 += (data[l4 + 1] + 1) << 3
                proto = nxt
                if frag == FRAG_LATER:
                    break
            if l4 > end:
                return None
        else:
            return None

        # ---- transport layer --------------------------------------------
        if frag == FRAG_LATER:
            pend = end if end < n else n
            payload = data[l4:pend]
            return _new(
                Decoded,
                (
                    ts_ns,
                    wirelen,
                    ipver,
                    proto,
                    src,
                    dst,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    payload,
                    end - pend if end > pend else 0,
                    frag,
                    vlan,
                ),
            )
        if proto == PROTO_TCP:
            if n < l4 + 20 or end < l4 + 20:
                return None
            sport, dport, seq, ack, doff, flags, win = _tcp(data, l4)
            dstart = l4 + ((doff >> 4) << 2)
            if dstart < l4 + 20 or dstart > end:
                return None
            if end <= n:
                payload = data[dstart:end] if end > dstart else b""
                missing = 0
            elif n > dstart:
                payload = data[dstart:n]
                missing = end - n
            else:
                payload = b""
                missing = end - dstart
            return _new(
                Decoded,
                (
                    ts_ns,
                    wirelen,
                    ipver,
                    proto,
                    src,
                    dst,
                    sport,
                    dport,
                    flags,
                    seq,
                    ack,
                    win,
                    payload,
                    missing,
                    frag,
                    vlan,
                ),
            )
        if proto == PROTO_UDP:
            hl4 = 8
        elif proto in (PROTO_ICMP, PROTO_ICMPV6):
            hl4 = 4
        else:
            pend = end if end < n else n
            return _new(
                Decoded,
                (
                    ts_ns,
                    wirelen,
                    ipver,
                    proto,
                    src,
                    dst,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    data[l4:pend],
                    end - pend if end > pend else 0,
                    frag,
                    vlan,
                ),
            )
        if n < l4 + 4 or end < l4 + hl4:
            return None
        if hl4 == 8:
            sport, dport = _udp(data, l4)
        else:
            sport = data[l4]
            dport = data[l4 + 1]
        dstart = l4 + hl4
        if end <= n:
            payload = data[dstart:end]
            missing = 0
        elif n > dstart:
            payload = data[dstart:n]
            missing = end - n
        else:
            payload = b""
            missing = end - dstart
        return _new(
            Decoded,
            (
                ts_ns,
                wirelen,
                ipver,
                proto,
                src,
                dst,
                sport,
                dport,
                0,
                0,
                0,
                0,
                payload,
                missing,
                frag,
                vlan,
            ),
        )
    except (IndexError, struct.error):  # cut inside a header we were walking
        return None


def _by_version(data: bytes, off: int) -> int:
    """Ethertype for a bare IP header at ``off`` (0 when neither v4 nor v6)."""
    if len(data) <= off:
        return 0
    v = data[off] >> 4
    if v == 4:
        return _ETH_IPV4
    if v == 6:
        return _ETH_IPV6
    return 0


def _ether_next(data: bytes, etype: int, off: int) -> tuple[int, int, int]:
    """Walk VLAN tags, MPLS labels and PPPoE from ``off``.

    Returns ``(ethertype, l3_offset, vlan)``; ethertype 0 when the payload is
    not IP.
    """
    vlan = -1
    n = len(data)
    for _ in range(_MAX_LABELS):
        if etype in (_ETH_IPV4, _ETH_IPV6):
            return etype, off, vlan
        if etype in _ETH_VLAN:
            if n < off + 4:
                return 0, off, vlan
            vlan = _u16(data, off)[0] & 0x0FFF
            etype = _u16(data, off + 2)[0]
            off += 4
        elif etype in _ETH_MPLS:
            for _label in range(_MAX_LABELS):
                if n < off + 4:
                    return 0, off, vlan
                bos = data[off + 2] & 1
                off += 4
                if bos:
                    break
            else:
                return 0, off, vlan
            if n <= off:
                return 0, off, vlan
            v = data[off] >> 4
            if v == 4:
                return _ETH_IPV4, off, vlan
            if v == 6:
                return _ETH_IPV6, off, vlan
            if v == 0:  # pseudowire control word, then an Ethernet frame
                off += 4
                if n < off + 14:
                    return 0, off, vlan
                etype = _u16(data, off + 12)[0]
                off += 14
            else:
                return 0, off, vlan
        elif etype == _ETH_PPPOE:
            if n < off + 8:
                return 0, off, vlan
            ppp = _u16(data, off + 6)[0]
            off += 8
            if ppp == 0x0021:
                etype = _ETH_IPV4
            elif ppp == 0x0057:
                etype = _ETH_IPV6
            else:
                return 0, off, vlan
        else:
            return 0, off, vlan
    return 0, off, vlan


def addr_text(addr: bytes) -> str:
    """The usual text form of a packed IPv4 or IPv6 address (RFC 5952 for v6)."""
    if len(addr) == 4:
        return f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}"
    import ipaddress  # noqa: PLC0415 - 1 ms of start-up, for IPv6 text only

    return str(ipaddress.IPv6Address(addr))
