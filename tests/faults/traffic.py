"""Numbered real traffic: real Ethernet/IPv4 frames from the bundled traces, each
made unique by writing its sequence number into the IPv4 identification field
(header checksum fixed), so that a capture can be checked packet by packet
against what was sent: which were lost, in which runs, duplicated or reordered.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path

from bulk.errors import TraceError
from bulk.trace import open_trace, pcap_header, record_header
from tests.compress_data import ethernet_packets

MAX_PACKETS = 65536  # the identification field has 16 bits


def _ipv4_frames(max_len: int) -> list[bytes]:
    frames = []
    for _wirelen, data in ethernet_packets():
        if len(data) < 34 or len(data) > max_len or data[12:14] != b"\x08\x00":
            continue
        ihl = (data[14] & 0x0F) * 4
        if data[14] >> 4 != 4 or ihl < 20 or len(data) < 14 + ihl:
            continue
        frames.append(data)
    return frames


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def numbered(data: bytes, n: int) -> bytes:
    ihl = (data[14] & 0x0F) * 4
    ip = bytearray(data[14 : 14 + ihl])
    struct.pack_into("!H", ip, 4, n & 0xFFFF)
    struct.pack_into("!H", ip, 10, 0)
    struct.pack_into("!H", ip, 10, _checksum(bytes(ip)))
    return data[:14] + bytes(ip) + data[14 + ihl :]


def write_numbered_pcap(
    path: str | os.PathLike[str],
    count: int,
    max_len: int = 1514,
    t0_s: int = 1_700_000_000,
    first: int = 0,
) -> int:
    """``count`` numbered frames (first..first+count-1), 1 ms apart. Returns the bytes
    written."""
    if first + count > MAX_PACKETS:
        raise ValueError(f"at most {MAX_PACKETS} numbered packets")
    frames = _ipv4_frames(max_len)
    size = 0
    with open(path, "wb") as f:
        f.write(pcap_header(1, 262144, False))
        for i in range(first, first + count):
            frame = numbered(frames[i % len(frames)], i)
            ts = t0_s * 1_000_000_000 + i * 1_000_000
            f.write(record_header(ts, len(frame), len(frame), False))
            f.write(frame)
            size += 16 + len(frame)
    return size + 24


def packet_numbers(files: Iterable[str | os.PathLike[str]]) -> list[int]:
    """The numbers of the numbered frames in ``files``, in file order (other frames skipped)."""
    out: list[int] = []
    for f in files:
        try:
            with open_trace(str(f)) as r:
                for p in r:
                    d = p.data
                    if len(d) >= 34 and d[12:14] == b"\x08\x00":
                        out.append(struct.unpack_from("!H", d, 18)[0])
        except TraceError as exc:
            raise AssertionError(f"{f}: {exc}") from None
    return out


def runs(missing: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive numbers as (first, last) runs."""
    out: list[tuple[int, int]] = []
    for n in sorted(missing):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def tcpreplay_sent(stdout: str) -> int:
    """Packets tcpreplay reports as sent ('Successful packets: N'; when interrupted,
    'Actual' may count one more: the packet being sent when it stopped)."""
    m = re.search(r"Successful packets:\s+(\d+)", stdout)
    if m is None:
        raise AssertionError(f"no packet count in tcpreplay's output: {stdout!r}")
    return int(m.group(1))


def data_path() -> Path:
    return Path(__file__).parents[1] / "data"
