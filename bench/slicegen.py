"""Generate a large, time-ordered pcap from the bundled real traces.

The packets are the Ethernet packets of tests/data (real traffic), repeated in
a random order with increasing timestamps spread evenly over ``span_s``
seconds. Used by bench/slice.py; tests build small files the same way.
"""

from __future__ import annotations

import glob
import os
import random
import struct
from pathlib import Path

from bulk.errors import TraceError
from bulk.trace import open_trace, pcap_header
from bulk.trace.packet import LINKTYPE_ETHERNET

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
T0 = 1795780800  # 2026-11-27 12:00:00 UTC


def real_packets(linktype: int = LINKTYPE_ETHERNET) -> list[tuple[int, bytes]]:
    """(wirelen, data) of every packet of the bundled traces with ``linktype``."""
    out: list[tuple[int, bytes]] = []
    for path in sorted(glob.glob(str(DATA / "*.pcap*"))):
        try:
            with open_trace(path) as reader:
                for pkt in reader:
                    if pkt.linktype == linktype:
                        out.append((pkt.wirelen, pkt.data))
        except TraceError:
            continue
    return out


def generate(
    path: str | os.PathLike[str],
    size: int,
    span_s: float,
    *,
    seed: int = 1,
    nanosecond: bool = False,
    start_s: int = T0,
) -> int:
    """Write about ``size`` bytes of pcap spanning ``span_s`` seconds; return packets."""
    rng = random.Random(seed)
    pkts = real_packets()
    mean = sum(16 + len(d) for _w, d in pkts) / len(pkts)
    count = max(2, int((size - 24) / mean))
    step_ns = int(span_s * 1e9 / count)
    pack = struct.Struct("<IIII").pack
    div = 1 if nanosecond else 1000
    ts = start_s * 1_000_000_000
    written = 0
    with open(path, "wb") as f:
        f.write(pcap_header(LINKTYPE_ETHERNET, 262144, nanosecond))
        chunk: list[bytes] = []
        for i in range(count):
            wirelen, data = pkts[rng.randrange(len(pkts))]
            sec, frac = divmod(ts, 1_000_000_000)
            chunk.append(pack(sec, frac // div, len(data), wirelen))
            chunk.append(data)
            ts += rng.randint(step_ns // 2, step_ns * 3 // 2) if step_ns > 1 else 1
            written += 1
            if i % 8192 == 8191:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))
    return written
