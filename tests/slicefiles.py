"""Inputs for the slicing tests, built from the bundled real traces.

Written with plain struct packing (not bulk's writer) so that the tests do not
check bulk against itself.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import zstandard

DATA = Path(__file__).parent / "data"
MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D


def read_pcap(path: Path) -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """(file header, [(sec, frac, wirelen, data)]) of a little- or big-endian pcap,
    whole records only."""
    raw = path.read_bytes()
    (magic,) = struct.unpack_from("<I", raw)
    endian = "<" if magic in (MAGIC_US, MAGIC_NS) else ">"
    out = []
    pos = 24
    while pos + 16 <= len(raw):
        sec, frac, caplen, wirelen = struct.unpack_from(endian + "IIII", raw, pos)
        if pos + 16 + caplen > len(raw):
            break
        out.append((sec, frac, wirelen, raw[pos + 16 : pos + 16 + caplen]))
        pos += 16 + caplen
    return raw[:24], out


def ethernet_packets() -> list[tuple[int, bytes]]:
    """(wirelen, data) of the little-endian microsecond Ethernet pcaps in tests/data."""
    out: list[tuple[int, bytes]] = []
    for path in sorted(DATA.glob("*.pcap")):
        head = path.read_bytes()[:24]
        if len(head) < 24 or struct.unpack_from("<I", head)[0] != MAGIC_US:
            continue
        if struct.unpack_from("<I", head, 20)[0] != 1:
            continue
        out.extend((w, d) for _s, _f, w, d in read_pcap(path)[1])
    return out


def build_trace(
    path: Path,
    packets: int,
    *,
    start_s: int = 1795780800,
    mean_gap_us: int = 2000,
    seed: int = 7,
    nanosecond: bool = False,
    ties: float = 0.05,
) -> None:
    """A time-ordered pcap of real packets with random gaps; ``ties`` of the
    packets share the previous packet's timestamp."""
    rng = random.Random(seed)
    pool = ethernet_packets()
    unit = 1 if nanosecond else 1000
    ts = start_s * 1_000_000_000
    parts = [struct.pack("<IHHiIII", MAGIC_NS if nanosecond else MAGIC_US, 2, 4, 0, 0, 262144, 1)]
    for _ in range(packets):
        wirelen, data = pool[rng.randrange(len(pool))]
        if rng.random() >= ties:
            ts += rng.randint(1, 2 * mean_gap_us) * 1000 + (
                rng.randrange(1000) if nanosecond else 0
            )
        sec, frac = divmod(ts, 1_000_000_000)
        parts.append(struct.pack("<IIII", sec, frac // unit, len(data), wirelen))
        parts.append(data)
    path.write_bytes(b"".join(parts))


def zstd_frames(src: Path, dst: Path, frame_size: int, *, seek_table: bool = False) -> int:
    """Compress ``src`` as independent zstd frames of ``frame_size`` bytes each
    (cut anywhere, not on packet boundaries); optionally append a seek table in
    the zstd seekable format. Returns the number of frames."""
    raw = src.read_bytes()
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=True)
    frames = [cctx.compress(raw[i : i + frame_size]) for i in range(0, len(raw), frame_size)]
    sizes = [min(frame_size, len(raw) - i) for i in range(0, len(raw), frame_size)]
    out = b"".join(frames)
    if seek_table:
        entries = b"".join(
            struct.pack("<II", len(f), n) for f, n in zip(frames, sizes, strict=True)
        )
        footer = struct.pack("<IBI", len(frames), 0, 0x8F92EAB1)
        body = entries + footer
        out += struct.pack("<II", 0x184D2A5E, len(body)) + body
    dst.write_bytes(out)
    return len(frames)
