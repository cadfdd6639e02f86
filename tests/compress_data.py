"""Larger pcap files made from the bundled real traces (compression and retention tests).

The Ethernet packets of every bundled trace, shuffled, with increasing
timestamps; ``random_payload`` of them get random bytes after their first 54
bytes (headers kept), like encrypted traffic, so that sizes after compression
stay close to the input.
"""

from __future__ import annotations

import os
import random
import struct
from functools import lru_cache
from pathlib import Path

from bulk.errors import TraceError
from bulk.trace import open_trace, pcap_header
from tests.conftest import TRACES

_REC = struct.Struct("<IIII")


@lru_cache(maxsize=1)
def ethernet_packets() -> tuple[tuple[int, bytes], ...]:
    out: list[tuple[int, bytes]] = []
    for t in TRACES:
        try:
            with open_trace(str(t)) as r:
                for p in r:
                    if p.linktype == 1:
                        out.append((p.wirelen, p.data))
        except TraceError:
            pass
    return tuple(out)


def make_pcap(
    path: str | os.PathLike[str],
    size: int,
    seed: int = 1,
    start_s: int = 1_700_000_000,
    random_payload: float = 0.6,
) -> int:
    """Write a microsecond Ethernet pcap of about ``size`` bytes; returns its packet count."""
    rng = random.Random(seed)
    pk = ethernet_packets()
    ts = start_s * 1_000_000
    parts = [pcap_header(1, 262144, False)]
    total = 24
    n = 0
    while total < size:
        wl, d = pk[rng.randrange(len(pk))]
        if len(d) > 54 and rng.random() < random_payload:
            d = d[:54] + rng.randbytes(len(d) - 54)
        ts += rng.randrange(1, 2000)
        parts.append(_REC.pack(ts // 1_000_000, ts % 1_000_000, len(d), wl))
        parts.append(d)
        total += 16 + len(d)
        n += 1
    Path(path).write_bytes(b"".join(parts))
    return n
