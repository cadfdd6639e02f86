"""Hostile packets, built byte by byte, written as pcap files for the analyzers.

Every generator is bounded in packet count; the payload bytes are random, the
headers plausible enough to reach the reassembly and the analyzers.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator

from bulk.trace import PcapWriter
from bulk.trace.packet import Packet
from tests.pktbuild import ACK, PSH, SYN, ether, ipv4, ipv6, tcp_header, tcp_packet, udp_header

T0 = 1_700_000_000 * 1_000_000_000
C, S = "10.1.0.1", "10.1.0.2"


def write(path: str | os.PathLike[str], packets: Iterator[Packet]) -> tuple[int, int]:
    """Write ``packets``; returns (packets, payload bytes offered to TCP)."""
    n = 0
    with PcapWriter(str(path), 1) as w:
        for p in packets:
            w.write(p)
            n += 1
    return n, 0


def _handshake(ts: int, cp: int = 40000) -> list[Packet]:
    return [
        tcp_packet(ts, C, cp, S, 80, 1000, 0, SYN),
        tcp_packet(ts + 1000, S, 80, C, cp, 5000, 1001, SYN | ACK),
        tcp_packet(ts + 2000, C, cp, S, 80, 1001, 5001, ACK),
    ]


def seq_jumps(count: int, size: int = 1400, seed: int = 1) -> Iterator[Packet]:
    """One connection whose data segments land anywhere in the 32-bit sequence space."""
    rng = random.Random(seed)
    ts = T0
    yield from _handshake(ts)
    for i in range(count):
        ts += 10_000
        payload = rng.randbytes(size)
        if i % 2:
            yield tcp_packet(ts, C, 40000, S, 80, rng.getrandbits(32), 5001, PSH | ACK, payload)
        else:
            yield tcp_packet(ts, S, 80, C, 40000, rng.getrandbits(32), 1001, PSH | ACK, payload)


def overlaps(count: int, size: int = 1400, seed: int = 2) -> Iterator[Packet]:
    """One connection re-sending overlapping ranges with different bytes each time,
    a little ahead of the data received (a hole that never fills)."""
    rng = random.Random(seed)
    ts = T0
    yield from _handshake(ts)
    for _ in range(count):
        ts += 10_000
        seq = 1001 + 100 + rng.randrange(0, 4 * size)
        yield tcp_packet(ts, C, 40000, S, 80, seq, 5001, PSH | ACK, rng.randbytes(size))


def many_flows(count: int, seed: int = 3) -> Iterator[Packet]:
    """``count`` connections, each a SYN then out-of-order data that waits for a hole."""
    rng = random.Random(seed)
    ts = T0
    for i in range(count):
        ts += 1_000
        src = f"10.{2 + (i >> 16) % 200}.{(i >> 8) & 255}.{i & 255}"
        port = 1024 + i % 60000
        yield tcp_packet(ts, src, port, S, 80, 7, 0, SYN)
        yield tcp_packet(ts + 1, src, port, S, 80, 8 + 500, 0, PSH | ACK, rng.randbytes(1000))


def bad_lengths(count: int, seed: int = 4) -> Iterator[Packet]:
    """Length fields that lie: IPv4 total length and IHL, TCP data offset, IPv6
    payload length, UDP length, VLAN stacks, empty and one-byte frames, a wire
    length below the captured length."""
    rng = random.Random(seed)
    ts = T0
    l4 = tcp_header(40000, 80, 1000, 0, PSH | ACK) + b"x" * 50
    shapes = []
    shapes.append(ether(ipv4(C, S, 6, l4, total_length=65535), 0x0800))  # claims 64 KiB
    shapes.append(ether(ipv4(C, S, 6, l4, total_length=3), 0x0800))  # below the header
    ihl15 = bytearray(ether(ipv4(C, S, 6, l4), 0x0800))
    ihl15[14] = 0x4F
    shapes.append(bytes(ihl15))  # options running past the packet
    doff = bytearray(ether(ipv4(C, S, 6, l4), 0x0800))
    doff[14 + 20 + 12] = 0xF0  # TCP header of 60 bytes in a short segment
    shapes.append(bytes(doff))
    v6 = bytearray(ether(ipv6("fd00::1", "fd00::2", 6, l4), 0x86DD))
    struct.pack_into("!H", v6, 14 + 4, 65535)
    shapes.append(bytes(v6))
    shapes.append(ether(ipv4(C, S, 17, udp_header(53, 53, 65000)[:4] + b"\xff\xff\0\0"), 0x0800))
    shapes.append(ether(ipv4(C, S, 6, l4), 0x0800, vlans=tuple(range(1, 40))))  # deep VLAN stack
    shapes.append(b"")
    shapes.append(b"\x02")
    for i in range(count):
        ts += 1_000
        frame = shapes[i % len(shapes)]
        if i % 7 == 0 and frame:
            frame = frame[: rng.randrange(0, len(frame))]  # cut anywhere
        wire = len(frame) if i % 3 else max(len(frame) - 10, 0)  # wire below captured
        yield Packet(ts, wire, 1, frame)
