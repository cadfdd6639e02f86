"""Build packets byte by byte for decoder, flow-table and contents tests.

Written independently of bulk.decode (plain struct packing from the RFC
layouts) so that tests do not check the decoder against itself.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterable

from bulk.trace.packet import LINKTYPE_ETHERNET, Packet
from bulk.trace.writer import PcapWriter

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def tcp_header(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    win: int = 8192,
    options: bytes = b"",
) -> bytes:
    assert len(options) % 4 == 0
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, win, 0, 0) + options


def udp_header(sport: int, dport: int, payload_len: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + payload_len, 0)


def ipv4(
    src: str,
    dst: str,
    proto: int,
    l4: bytes,
    *,
    options: bytes = b"",
    frag_offset: int = 0,
    more_fragments: bool = False,
    total_length: int | None = None,
    ident: int = 1,
) -> bytes:
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    tot = ihl * 4 + len(l4) if total_length is None else total_length
    fragw = (0x2000 if more_fragments else 0) | (frag_offset // 8)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, ident, fragw, 64, proto, 0, _addr(src), _addr(dst)
    )
    return hdr + options + l4


def ipv6(src: str, dst: str, proto: int, l4: bytes, *, ext: list[tuple[int, bytes]] = ()) -> bytes:  # type: ignore[assignment]
    """``ext``: extension headers as (their protocol number, body); chained in order."""
    chain = b""
    protos = [p for p, _ in ext] + [proto]
    for i, (_p, body) in enumerate(ext):
        nxt = protos[i + 1]
        if _p == 44:  # fragment header: fixed 8 bytes, body = 6 bytes after next/reserved
            chain += bytes([nxt, 0]) + body
        else:
            total = 2 + len(body)
            assert total % 8 == 0
            chain += bytes([nxt, total // 8 - 1]) + body
    first = protos[0]
    payload = chain + l4
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(payload), first, 64, _addr(src), _addr(dst))
    return hdr + payload


def ether(payload: bytes, ethertype: int, vlans: tuple[int, ...] = (), tpid: int = 0x8100) -> bytes:
    head = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"
    for i, vid in enumerate(vlans):
        t = tpid if i == 0 else 0x8100
        head += struct.pack("!HH", t, vid)
    return head + struct.pack("!H", ethertype) + payload


def tcp_packet(
    ts_ns: int,
    src: str,
    sport: int,
    dst: str,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    trailer: bytes = b"",
    snap: int | None = None,
) -> Packet:
    """An Ethernet/IPv4-or-IPv6/TCP packet; ``snap`` cuts the captured bytes."""
    l4 = tcp_header(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags) + payload
    if ":" in src:
        frame = ether(ipv6(src, dst, 6, l4), 0x86DD)
    else:
        frame = ether(ipv4(src, dst, 6, l4), 0x0800)
    frame += trailer
    wire = len(frame)
    if snap is not None:
        frame = frame[:snap]
    return Packet(ts_ns, wire, LINKTYPE_ETHERNET, frame)


class Conn:
    """Generate the packets of one TCP connection (client c, server s)."""

    def __init__(
        self,
        c: str = "10.0.0.1",
        cp: int = 40000,
        s: str = "10.0.0.2",
        sp: int = 80,
        cisn: int = 1000,
        sisn: int = 5000,
    ) -> None:
        self.c, self.cp, self.s, self.sp = c, cp, s, sp
        self.cisn, self.sisn = cisn, sisn
        self.ts = 1_000_000_000_000_000_000

    def _tick(self) -> int:
        self.ts += 1_000_000
        return self.ts

    def syn(self) -> Packet:
        return tcp_packet(self._tick(), self.c, self.cp, self.s, self.sp, self.cisn, 0, SYN)

    def synack(self) -> Packet:
        return tcp_packet(
            self._tick(), self.s, self.sp, self.c, self.cp, self.sisn, self.cisn + 1, SYN | ACK
        )

    def handshake(self) -> list[Packet]:
        return [self.syn(), self.synack(), self.c2s(0, b"", ACK)]

    def c2s(self, off: int, data: bytes, flags: int = ACK | PSH, **kw: object) -> Packet:
        """Client data at stream offset ``off`` (0 = first byte after the SYN)."""
        return tcp_packet(
            self._tick(),
            self.c,
            self.cp,
            self.s,
            self.sp,
            self.cisn + 1 + off,
            self.sisn + 1,
            flags,
            data,
            **kw,  # type: ignore[arg-type]
        )

    def s2c(self, off: int, data: bytes, flags: int = ACK | PSH, **kw: object) -> Packet:
        return tcp_packet(
            self._tick(),
            self.s,
            self.sp,
            self.c,
            self.cp,
            self.sisn + 1 + off,
            self.cisn + 1,
            flags,
            data,
            **kw,  # type: ignore[arg-type]
        )


def write_pcap(
    path: str | os.PathLike[str], packets: Iterable[Packet], nanosecond: bool = False
) -> None:
    """A classic Ethernet pcap of ``packets`` (bulk's writer, tested on its own)."""
    with PcapWriter(os.fspath(path), LINKTYPE_ETHERNET, nanosecond=nanosecond) as w:
        for p in packets:
            w.write(p)
