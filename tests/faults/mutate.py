"""Mutated real traces for the fuzz suites: byte flips, truncations, corrupted
length fields, splices, and the same on compressed copies.

A mutation plan is drawn by hypothesis from the structure of the original: the
length fields of pcap records (caplen, wirelen), of pcapng blocks (leading
and trailing block lengths, EPB captured and original lengths) and the last
bytes of a compressed file (where the seek table and frame index live) are
hit far more often than uniformly random positions would hit them.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from hypothesis import strategies as st

from bulk.compress.codec import CompressSettings, compress_file
from tests.conftest import DATA

# Small real traces of every format the readers know (kept small so that an
# example costs milliseconds): pcap us/ns, pcapng (multi-interface too),
# VLAN/MPLS, Linux SLL2, a file cut mid-packet, TCP streams for the analyzers.
BASES = (
    "zeek-http-get.pcap",
    "zeek-ftp-ipv6.pcap",
    "ssh-on-port-80.pcap",
    "mixed-vlan-mpls.pcap",
    "tcp-handshake-nano.pcap",
    "linux_dlt_sll2.pcap",
    "http-on-irc-port-missing-syn.pcapng",
    "pcapng-multi-interface.pcapng",
    "suricata-telnet.pcap",
    "zeek-smtp-cut-mid-packet.pcap",
    "test5-lines-randomized.pcap",
    "dns_tcp_8053.pcap",
)
# Compressed copies (seekable zstd and multi-member gzip with their frame
# index), with small frames so that one file holds several.
COMPRESSED_BASES = ("zeek-http-get.pcap", "ssh-on-port-80.pcap", "suricata-telnet.pcap")
FRAME_SIZE = 2048

PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
INTERESTING_U32 = (
    0,
    1,
    15,
    16,
    23,
    24,
    0x7FFF,
    0xFFFF,
    0x10000,
    262144,
    262145,
    0x00FFFFFF,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFF0,
    0xFFFFFFFF,
)


@dataclass(frozen=True)
class Base:
    name: str
    data: bytes = field(repr=False)
    fields: tuple[tuple[int, str], ...] = field(repr=False)  # (offset of a 32-bit length, "<"/">")
    suffix: str = ".pcap"  # ".pcap", ".pcapng", ".pcap.zst", ".pcap.gz"


def length_fields(data: bytes) -> list[tuple[int, str]]:
    """The offsets of the length fields of a pcap or pcapng trace, in file order."""
    out: list[tuple[int, str]] = []
    if len(data) < 24:
        return out
    magic = data[:4]
    if magic in PCAP_MAGICS:
        e = "<" if magic[0] in (0xD4, 0x4D) else ">"
        out.append((16, e))  # snaplen
        off = 24
        while off + 16 <= len(data):
            caplen = struct.unpack_from(e + "I", data, off + 8)[0]
            out += [(off + 8, e), (off + 12, e)]
            off += 16 + caplen
        return out
    if magic == b"\x0a\x0d\x0d\x0a":
        e = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        off = 0
        while off + 12 <= len(data):
            btype, blen = struct.unpack_from(e + "II", data, off)
            if blen < 12 or off + blen > len(data):
                break
            out += [(off + 4, e), (off + blen - 4, e)]
            if btype == 6 and blen >= 32:  # EPB: captured and original lengths
                out += [(off + 20, e), (off + 24, e)]
            off += blen
    return out


class Pool(tuple[Base, ...]):
    """Bases, printed by name only (hypothesis prints test arguments in full)."""

    def __repr__(self) -> str:
        return f"Pool({', '.join(b.name for b in self)})"

    __str__ = __repr__

    def _repr_pretty_(self, p: object, cycle: bool) -> None:
        p.text(repr(self))  # type: ignore[attr-defined]


def pick(data: st.DataObject, pool: tuple[Base, ...]) -> Base:
    """One base trace (drawn by index: hypothesis prints drawn values in full)."""
    i = data.draw(st.integers(0, len(pool) - 1), label=" | ".join(b.name for b in pool))
    return pool[i]


def fresh(work: Path) -> Path:
    """``work`` emptied for the next example."""
    for p in work.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return work


@lru_cache(maxsize=1)
def bases() -> tuple[Base, ...]:
    found: list[Base] = []
    for name in BASES:
        data = (DATA / name).read_bytes()
        suffix = ".pcapng" if name.endswith(".pcapng") else ".pcap"
        found.append(Base(name, data, tuple(length_fields(data)), suffix))
    return tuple(found)


def compressed_bases(workdir: Path) -> tuple[Base, ...]:
    """Seekable zstd and gzip copies of a few bases (made with bulk's own codec)."""
    found: list[Base] = []
    for name in COMPRESSED_BASES:
        for fmt, ext in (("zstd", ".zst"), ("gzip", ".gz")):
            out = workdir / f"{name}{ext}"
            with open(out, "wb") as f:
                compress_file(
                    str(DATA / name), f, CompressSettings(fmt=fmt, frame_size=FRAME_SIZE, threads=1)
                )
            data = out.read_bytes()
            found.append(Base(f"{name}{ext}", data, (), f".pcap{ext}"))
    return tuple(found)


@st.composite
def mutations(draw: st.DrawFn, base: Base, max_ops: int = 4) -> bytes:
    """``base``'s bytes after 1..max_ops mutations."""
    data = bytearray(base.data)
    others = bases()
    for _ in range(draw(st.integers(1, max_ops))):
        n = len(data)
        kind = draw(
            st.sampled_from(("flip", "length", "truncate", "splice", "delete", "duplicate", "tail"))
        )
        if n < 4:
            break
        if kind == "flip":
            pos = draw(st.integers(0, n - 1))
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "length":
            if base.fields:
                off, e = draw(st.sampled_from(base.fields))
            else:  # compressed: the seek table / frame index sit at the end
                off, e = max(n - draw(st.integers(4, min(n, 256))), 0), "<"
            if off + 4 <= n:
                old = struct.unpack_from(e + "I", data, off)[0]
                value = draw(
                    st.one_of(
                        st.sampled_from(INTERESTING_U32),
                        st.integers(0, 0xFFFFFFFF),
                        st.integers(-64, 64).map(lambda d, o=old: (o + d) & 0xFFFFFFFF),
                    )
                )
                struct.pack_into(e + "I", data, off, value)
        elif kind == "truncate":
            data = data[: draw(st.integers(0, n - 1))]
        elif kind == "splice":  # a chunk of this or another real trace, inserted
            k = draw(st.integers(-1, len(others) - 1))  # -1: this trace itself
            donor = bytes(data) if k < 0 else others[k].data
            a = draw(st.integers(0, max(len(donor) - 1, 0)))
            chunk = donor[a : a + draw(st.integers(1, 2048))]
            pos = draw(st.integers(0, n))
            overwrite = draw(st.booleans())
            data[pos : pos + (len(chunk) if overwrite else 0)] = chunk
        elif kind == "delete":
            a = draw(st.integers(0, n - 1))
            del data[a : a + draw(st.integers(1, 512))]
        elif kind == "duplicate":
            a = draw(st.integers(0, n - 1))
            chunk = data[a : a + draw(st.integers(1, 4096))]
            data[a:a] = chunk
        else:  # tail: flip a byte near the end (trailers, seek tables, cut records)
            pos = max(n - draw(st.integers(1, min(n, 64))), 0)
            data[pos] ^= draw(st.integers(1, 255))
    return bytes(data)


def write_case(directory: Path, base: Base, data: bytes, stem: str = "case") -> Path:
    """The mutated bytes under a name with the base's suffix (readers go by content,
    but a compressed name tells the reader to expect compression)."""
    path = directory / f"{stem}{base.suffix}"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
