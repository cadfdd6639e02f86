"""The per-trace host index: which addresses, ports and protocols a trace holds.

A small side file ``TRACE.idx`` (``X.pcap.idx``, ``X.pcap.zst.idx``) written when a
trace is closed lets ``bulk extract`` skip traces that cannot match a filter
(see :mod:`bulk.bpfquery`). It holds, exactly, as sorted arrays:

- the IPv4 addresses (IP source and destination, and the ARP/RARP protocol
  addresses) and the IPv6 addresses seen at every encapsulation depth libpcap
  can reach (802.1Q/802.1ad/QinQ tags, MPLS label stacks, PPPoE sessions);
- the TCP, UDP and SCTP ports (IPv4 first fragments, IPv6 with or without
  extension headers);
- the IP protocol numbers (IPv4 protocol, every IPv6 next-header in the
  chain) and which of IPv4, IPv6, ARP and RARP occur;
- the trace's format, link types, snaplen, resolution, packet count, first,
  last, lowest and highest time.

Soundness rule: the index records at least every value a BPF program could
compare (it reads fields where libpcap reads them, without validating
versions, lengths or checksums); a trace with a link type this module does
not decode, or which could not be read to its end, is marked incomplete and
is never skipped. A stale index (the trace changed since) is ignored: the
index records the trace's size and modification time, and a CRC of its first
16 KiB of pcap data, checked when the file is not the very one indexed (it was
compressed since, or copied).

File format: ``b"BULKHIX1"`` then one zlib stream of a JSON header line
(metadata and section lengths) followed by the sections: IPv4 addresses
(4-byte big-endian, sorted), IPv6 addresses (16 bytes, sorted), TCP, UDP and
SCTP ports (2-byte big-endian, sorted). Sorted fixed-width big-endian values
compare as bytes the way they compare as numbers, so lookups are binary
searches and ``net`` prefixes are range searches.

The index follows the trace: ``bulk compress`` moves ``X.pcap.idx`` to
``X.pcap.zst.idx`` and retention deletes it with the trace
(:data:`bulk.compress.safe.SIDE_SUFFIXES`).
"""

from __future__ import annotations

import array
import bisect
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from bulk.errors import TraceError, TruncatedTrace

# pcap LINKTYPE numbers (bulk.trace.packet): kept here so that loading an index
# does not import the trace layer; building one does.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

MAGIC = b"BULKHIX1"
VERSION = 1
INDEX_SUFFIX = ".idx"
HEAD_BYTES = 16384
COMPRESSION_SUFFIXES = (".zst", ".gz")
PORT_PROTOS = (6, 17, 132)  # tcp, udp, sctp
DECODED_LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)

_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_MPLS = frozenset({0x8847, 0x8848})
_IPV6_EXT = frozenset({0, 43, 44, 51, 60, 135, 139, 140})
_AF_INET = frozenset({2, 2 << 24})
_AF_INET6 = frozenset({10, 24, 28, 30, 10 << 24, 24 << 24, 28 << 24, 30 << 24})
_MAX_DEPTH = 16


# -- collecting -------------------------------------------------------------------------


class Collector:
    """Accumulates what packets hold; :meth:`finish` makes the sorted arrays.

    ``add(linktype, data)`` is the whole interface. The common cases (IPv4 and
    IPv6 over Ethernet without tags) keep one 12- or 36-byte slice per distinct
    address/port combination; everything else goes through the generic decoder.
    """

    def __init__(self) -> None:
        self.fast4: list[set[bytes]] = [set() for _ in range(256)]
        self._fast6: list[set[bytes]] = [set() for _ in range(256)]
        self.addr4: set[bytes] = set()
        self.addr6: set[bytes] = set()
        self.ports: dict[int, set[bytes]] = {p: set() for p in PORT_PROTOS}
        self.protos: set[int] = set()
        self.l3: set[str] = set()
        self.undecoded_linktypes: set[int] = set()

    def add(self, linktype: int, data: bytes) -> None:
        if linktype == LINKTYPE_ETHERNET and len(data) >= 38:
            et = data[12:14]
            if et == b"\x08\x00":
                if data[14] == 0x45 and not (data[20] & 0x1F or data[21]):
                    self.fast4[data[23]].add(data[26:38])
                    return
            elif et == b"\x86\xdd" and len(data) >= 58 and data[20] not in _IPV6_EXT:
                self._fast6[data[20]].add(data[22:58])
                return
        self._generic(linktype, data)

    # The generic decoder reads every field where libpcap's BPF code reads it.

    def _generic(self, linktype: int, data: bytes) -> None:
        n = len(data)
        if linktype == LINKTYPE_ETHERNET:
            if n >= 14:
                self._ethertype(data, int.from_bytes(data[12:14], "big"), 14, 0)
        elif linktype == LINKTYPE_LINUX_SLL:
            if n >= 16:
                self._ethertype(data, int.from_bytes(data[14:16], "big"), 16, 0)
        elif linktype == LINKTYPE_LINUX_SLL2:
            if n >= 2:
                self._ethertype(data, int.from_bytes(data[0:2], "big"), 20, 0)
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if n >= 4:
                af = int.from_bytes(data[0:4], "big")
                if af in _AF_INET:
                    self._ipv4(data, 4)
                if af in _AF_INET6:
                    self._ipv6(data, 4)
        elif linktype == LINKTYPE_RAW:
            if n >= 1:
                version = data[0] >> 4
                if version == 4:
                    self._ipv4(data, 0)
                elif version == 6:
                    self._ipv6(data, 0)
        elif linktype == LINKTYPE_IPV4:
            self._ipv4(data, 0)
        elif linktype == LINKTYPE_IPV6:
            self._ipv6(data, 0)
        else:
            self.undecoded_linktypes.add(linktype)

    def _ethertype(self, data: bytes, et: int, off: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        n = len(data)
        if et == 0x0800:
            self._ipv4(data, off)
        elif et == 0x86DD:
            self._ipv6(data, off)
        elif et in (0x0806, 0x8035):
            self.l3.add("arp" if et == 0x0806 else "rarp")
            for a in (off + 14, off + 24):
                if a + 4 <= n:
                    self.addr4.add(data[a : a + 4])
        elif et in _VLAN_TPIDS:
            if off + 4 <= n:
                self._ethertype(
                    data, int.from_bytes(data[off + 2 : off + 4], "big"), off + 4, depth + 1
                )
        elif et in _MPLS:
            self._mpls(data, off)
        elif et == 0x8864 and off + 8 <= n:  # PPPoE session: PPP protocol after 6 bytes
            ppp = int.from_bytes(data[off + 6 : off + 8], "big")
            if ppp == 0x0021:
                self._ipv4(data, off + 8)
            elif ppp == 0x0057:
                self._ipv6(data, off + 8)

    def _mpls(self, data: bytes, off: int) -> None:
        n = len(data)
        for _ in range(_MAX_DEPTH):
            if off + 4 > n:
                return
            bottom = data[off + 2] & 1
            off += 4
            if off < n:  # libpcap looks for an IP version nibble after the label
                version = data[off] >> 4
                if version == 4:
                    self._ipv4(data, off)
                elif version == 6:
                    self._ipv6(data, off)
            if bottom:
                return

    def _ipv4(self, data: bytes, off: int) -> None:
        self.l3.add("ip")
        n = len(data)
        if off + 10 > n:
            return
        proto = data[off + 9]
        self.protos.add(proto)
        for a in (off + 12, off + 16):
            if a + 4 <= n:
                self.addr4.add(data[a : a + 4])
        if proto in self.ports:
            if off + 8 <= n and (data[off + 6] & 0x1F or data[off + 7]):
                return  # not a first fragment: BPF reads no ports
            p = off + (data[off] & 0x0F) * 4
            self._port(proto, data, p)

    def _ipv6(self, data: bytes, off: int) -> None:
        self.l3.add("ip6")
        n = len(data)
        if off + 7 > n:
            return
        nh = data[off + 6]
        self.protos.add(nh)
        for a in (off + 8, off + 24):
            if a + 16 <= n:
                self.addr6.add(data[a : a + 16])
        p = off + 40
        if nh in self.ports:
            self._port(nh, data, p)
        # Walk extension headers too: libpcap's "tcp" also accepts a fragment
        # header followed by TCP; recording more protocols is always safe.
        for _ in range(_MAX_DEPTH):
            if nh not in _IPV6_EXT or p + 2 > n:
                break
            nxt = data[p]
            if nh == 44:
                length = 8
            elif nh == 51:
                length = (data[p + 1] + 2) * 4
            else:
                length = (data[p + 1] + 1) * 8
            nh = nxt
            self.protos.add(nh)
            p += length
            if nh in self.ports:
                self._port(nh, data, p)

    def _port(self, proto: int, data: bytes, p: int) -> None:
        n = len(data)
        ports = self.ports[proto]
        if p + 2 <= n:
            ports.add(data[p : p + 2])
        if p + 4 <= n:
            ports.add(data[p + 2 : p + 4])

    def finish(self) -> tuple[bytes, bytes, dict[int, bytes]]:
        """Sorted, joined arrays: IPv4 (4 bytes each), IPv6 (16), ports per protocol (2)."""
        addr4 = self.addr4
        addr6 = self.addr6
        for proto in range(256):
            keys4 = self.fast4[proto]
            keys6 = self._fast6[proto]
            if not keys4 and not keys6:
                continue
            self.protos.add(proto)
            ports = self.ports.get(proto)
            if keys4:
                self.l3.add("ip")
            for k in keys4:
                addr4.add(k[0:4])
                addr4.add(k[4:8])
                if ports is not None:
                    ports.add(k[8:10])
                    ports.add(k[10:12])
            if keys6:
                self.l3.add("ip6")
            for k in keys6:
                addr6.add(k[0:16])
                addr6.add(k[16:32])
                if ports is not None:
                    ports.add(k[32:34])
                    ports.add(k[34:36])
        return (
            b"".join(sorted(addr4)),
            b"".join(sorted(addr6)),
            {p: b"".join(sorted(s)) for p, s in self.ports.items()},
        )


# -- the index --------------------------------------------------------------------------


class _Fixed(Sequence[bytes]):
    """A sorted blob of fixed-width records, as a sequence ``bisect`` can search."""

    def __init__(self, blob: bytes, width: int) -> None:
        self._blob = blob
        self._w = width

    def __len__(self) -> int:
        return len(self._blob) // self._w

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        w = self._w
        return self._blob[i * w : i * w + w]


def _uint_array(blob: bytes, code: str) -> array.array[int]:
    arr: array.array[int] = array.array(code)
    arr.frombytes(blob)
    if sys.byteorder == "little":
        arr.byteswap()
    return arr


class HostIndex:
    """One trace's index: metadata plus the sorted arrays (implements bpfquery.Facts).

    A plain class, not a dataclass: loading indexes is on the start-up path of
    ``bulk extract`` (the dataclasses module alone costs about 8 ms).
    """

    def __init__(
        self,
        meta: dict[str, Any],
        addr4_blob: bytes = b"",
        addr6_blob: bytes = b"",
        port_blobs: dict[int, bytes] | None = None,
    ) -> None:
        self.meta = meta
        self.addr4_blob = addr4_blob
        self.addr6_blob = addr6_blob
        self.port_blobs = port_blobs if port_blobs is not None else {}
        # The compression of the file the index was checked against by load_index_for
        # (from its bytes when it is not the very file indexed: an index written
        # before compression renamed the trace still says "compression": null).
        self.trace_compression: str | None = meta.get("compression")
        self._addr4 = _uint_array(self.addr4_blob, "I")
        self._addr6 = _Fixed(self.addr6_blob, 16)
        self._ports = {p: _uint_array(b, "H") for p, b in self.port_blobs.items()}
        self._protos = frozenset(self.meta.get("protos", ()))
        self._l3 = frozenset(self.meta.get("l3", ()))

    # metadata
    @property
    def complete(self) -> bool:
        """True if the index covers every packet libpcap can read from the trace."""
        return bool(self.meta.get("complete"))

    @property
    def packets(self) -> int:
        return int(self.meta.get("packets", 0))

    @property
    def min_ns(self) -> int | None:
        v = self.meta.get("min_ns")
        return None if v is None else int(v)

    @property
    def max_ns(self) -> int | None:
        v = self.meta.get("max_ns")
        return None if v is None else int(v)

    @property
    def first_ns(self) -> int | None:
        v = self.meta.get("first_ns")
        return None if v is None else int(v)

    @property
    def linktypes(self) -> list[int]:
        return [int(x) for x in self.meta.get("linktypes", [])]

    @property
    def addresses4(self) -> int:
        return len(self._addr4)

    @property
    def addresses6(self) -> int:
        return len(self._addr6)

    def addr4_values(self) -> list[int]:
        """The IPv4 addresses, ascending, as integers."""
        return list(self._addr4)

    def addr6_values(self) -> list[int]:
        """The IPv6 addresses, ascending, as integers."""
        return [int.from_bytes(a, "big") for a in self._addr6]

    def port_values(self, proto: int) -> list[int]:
        """The ports seen for one of tcp (6), udp (17), sctp (132), ascending."""
        return list(self._ports.get(proto, ()))

    # bpfquery.Facts
    def has_addr4(self, value: int, mask: int) -> bool:
        inv = ~mask & 0xFFFFFFFF
        if inv & (inv + 1) == 0:  # a prefix: one range
            lo = value & mask
            i = bisect.bisect_left(self._addr4, lo)
            return i < len(self._addr4) and self._addr4[i] <= lo | inv
        return any(a & mask == value for a in self._addr4)

    def has_addr6(self, value: int, prefixlen: int) -> bool:
        host = (1 << (128 - prefixlen)) - 1
        lo = (value & ~host).to_bytes(16, "big")
        hi = (value | host).to_bytes(16, "big")
        i = bisect.bisect_left(self._addr6, lo)
        return i < len(self._addr6) and self._addr6[i] <= hi

    def has_port(self, lo: int, hi: int, protos: frozenset[int]) -> bool:
        for proto in protos:
            arr = self._ports.get(proto)
            if arr is None:
                continue
            i = bisect.bisect_left(arr, lo)
            if i < len(arr) and arr[i] <= hi:
                return True
        return False

    def has_proto(self, proto: int) -> bool:
        return proto in self._protos

    def has_l3(self, kind: str) -> bool:
        return kind in self._l3

    # serialisation
    def encode(self) -> bytes:
        meta = dict(self.meta)
        meta["sections"] = {
            "addr4": len(self.addr4_blob),
            "addr6": len(self.addr6_blob),
            "ports": {str(p): len(b) for p, b in sorted(self.port_blobs.items())},
        }
        header = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        parts = [header, self.addr4_blob, self.addr6_blob]
        parts.extend(b for _p, b in sorted(self.port_blobs.items()))
        return MAGIC + zlib.compress(b"".join(parts), 6)

    @classmethod
    def decode(cls, raw: bytes) -> HostIndex:
        if raw[: len(MAGIC)] != MAGIC:
            raise ValueError("not a bulk host index")
        body = zlib.decompress(raw[len(MAGIC) :])
        nl = body.index(b"\n")
        meta = json.loads(body[:nl])
        if meta.get("version") != VERSION:
            raise ValueError(f"index version {meta.get('version')} not supported")
        sections = meta.pop("sections")
        pos = nl + 1
        n4 = int(sections["addr4"])
        n6 = int(sections["addr6"])
        addr4 = body[pos : pos + n4]
        pos += n4
        addr6 = body[pos : pos + n6]
        pos += n6
        ports: dict[int, bytes] = {}
        for key, length in sorted(sections["ports"].items(), key=lambda kv: int(kv[0])):
            ports[int(key)] = body[pos : pos + int(length)]
            pos += int(length)
        if pos != len(body) or n4 % 4 or n6 % 16 or any(len(b) % 2 for b in ports.values()):
            raise ValueError("index sections do not add up")
        return cls(meta, addr4, addr6, ports)


# -- building, writing, finding -------------------------------------------------------------


def index_packets(packets: Iterable[tuple[int, bytes]]) -> HostIndex:
    """An index of (linktype, bytes) packets that are not in a file (tests, tools)."""
    col = Collector()
    for linktype, data in packets:
        col.add(linktype, data)
    addr4, addr6, ports = col.finish()
    meta: dict[str, Any] = {
        "version": VERSION,
        "complete": not col.undecoded_linktypes,
        "protos": sorted(col.protos),
        "l3": sorted(col.l3),
    }
    return HostIndex(meta, addr4, addr6, ports)


def head_crc(path: str) -> tuple[str | None, int, int]:
    """Compression, and CRC-32 and length of the first HEAD_BYTES of the pcap data."""
    from bulk.trace.stream import TraceStream  # noqa: PLC0415

    with TraceStream(path) as stream:
        head = stream.file.read(HEAD_BYTES)
        return stream.compression, zlib.crc32(head), len(head)


class _Walk:
    """Totals and time range of one pass over a trace."""

    def __init__(self) -> None:
        self.packets = 0
        self.first = 0
        self.last = 0
        self.lo = 0
        self.hi = 0
        self.ordered = True
        self.error: str | None = None
        self.complete = True

    def times(self, keys: Sequence[int], to_ns: Callable[[int], int]) -> None:
        """Fold a run of time keys (in file order, monotone in time) into the totals."""
        if not keys:
            return
        k0 = to_ns(keys[0])
        if self.packets == 0:
            self.first = self.lo = self.hi = self.last = k0
        elif k0 < self.last:
            self.ordered = False
        if self.ordered and list(keys) != sorted(keys):
            self.ordered = False
        self.lo = min(self.lo, to_ns(min(keys)))
        self.hi = max(self.hi, to_ns(max(keys)))
        self.last = to_ns(keys[-1])
        self.packets += len(keys)


def _ns(key: int) -> int:
    return key


def _usec_key_ns(key: int) -> int:
    """A ``sec << 32 | usec`` key in nanoseconds."""
    return (key >> 32) * 1_000_000_000 + (key & 0xFFFFFFFF) * 1000


def _walk_python(path: str, col: Collector, walk: _Walk) -> None:
    from bulk.trace import open_trace  # noqa: PLC0415

    add = col.add
    keys: list[int] = []
    with open_trace(path) as reader:
        try:
            for pkt in reader:
                add(pkt.linktype, pkt.data)
                keys.append(pkt.ts_ns)
                if len(keys) >= 65536:
                    walk.times(keys, _ns)
                    keys = []
        except TruncatedTrace as exc:
            walk.error = exc.reason
        except TraceError as exc:
            walk.error = exc.reason
            walk.complete = False
        walk.times(keys, _ns)


_BATCH = 4096


def _walk_libpcap(path: str, linktype: int, col: Collector, walk: _Walk) -> bool:
    """libpcap's own reader in batches (plain microsecond pcap); False if it cannot open it."""
    import pcapy  # noqa: PLC0415

    try:
        handle = pcapy.open_offline(path)
    except pcapy.PcapError:
        return False
    try:
        _drain(handle, linktype, col, walk, _BATCH)
    except pcapy.PcapError as exc:
        # libpcap drops the whole batch that met the damage: read it again one
        # record at a time, to keep every whole record before the damage.
        handle = pcapy.open_offline(path)
        _skip(handle, walk.packets)
        try:
            _drain(handle, linktype, col, walk, 1)
        except pcapy.PcapError:
            pass
        walk.error = str(exc)
        walk.complete = "truncated" in str(exc)
    return True


def _skip(handle: Any, count: int) -> None:
    while count > 0:
        _data, meta = handle.next_batch(min(count, _BATCH))
        if not meta:
            return
        count -= len(meta) // 16


def _drain(handle: Any, linktype: int, col: Collector, walk: _Walk, batch: int) -> None:
    add = col.add
    fast4 = col.fast4
    ether = linktype == LINKTYPE_ETHERNET
    while True:
        buf, meta = handle.next_batch(batch)
        if not meta:
            return
        a: array.array[int] = array.array("I")
        a.frombytes(meta)
        # (usec, sec) pairs read as 64-bit words: sec << 32 | usec, in time order.
        pairs: array.array[int] = array.array("I", bytes(len(a) * 2))
        pairs[0::2] = a[1::4]
        pairs[1::2] = a[0::4]
        keys: array.array[int] = array.array("Q")
        keys.frombytes(pairs.tobytes())
        if sys.byteorder != "little":  # pragma: no cover - little-endian hosts only here
            keys.byteswap()
        walk.times(keys, _usec_key_ns)
        for off, cap in zip(a[2::4], a[3::4], strict=True):
            if (
                ether
                and cap >= 38
                and buf[off + 12 : off + 15] == b"\x08\x00\x45"
                and not (buf[off + 20] & 0x1F or buf[off + 21])
            ):
                fast4[buf[off + 23]].add(buf[off + 26 : off + 38])
            else:
                add(linktype, buf[off : off + cap])


# -- the C walk (csrc/hostscan.c) --------------------------------------------------------

# Read size: holds the longest record (16 + 262144 bytes) and stays near the L2 cache
# (512 KiB read and walked in 0.171 s for 500 MB of 64-byte frames, 1 MiB in 0.175 s,
# 2 MiB in 0.193 s).
_CHUNK = 1 << 19
_MAX_CAPLEN = 262144  # libpcap's MAXIMUM_SNAPLEN (and pcaprec.h's PCAPREC_MAX_CAPLEN)
_LIBPCAP_BIG_DLTS = (231, 249)  # DLT_DBUS, DLT_USBPCAP: libpcap allows longer records
_Merged = tuple[bytes, bytes, dict[int, bytes], set[int], set[str]]


def _native_plan(head: bytes, nanosecond: bool) -> tuple[bool, int] | None:
    """(byte-swapped, snapshot) when the C walk reads this pcap file as the Python walk
    does, else None.

    Microsecond pcap is read the way libpcap 1.9 reads it (_walk_libpcap): version
    2.4 or later only (earlier ones swap the length fields), the snapshot length
    taken as libpcap takes it (as a C int: 0 or negative means the maximum),
    records cut to it. Nanosecond pcap as bulk.trace reads it (_walk_python), when no record
    may exceed the maximum (a snaplen above it would allow longer ones).
    """
    if len(head) < 24:
        return None
    magic = int.from_bytes(head[0:4], "little")
    little = magic in (0xA1B2C3D4, 0xA1B23C4D)
    order: Literal["little", "big"] = "little" if little else "big"
    if int.from_bytes(head[0:4], order) != (0xA1B23C4D if nanosecond else 0xA1B2C3D4):
        return None
    swapped = order != sys.byteorder
    major = int.from_bytes(head[4:6], order)
    minor = int.from_bytes(head[6:8], order)
    snaplen = int.from_bytes(head[16:20], order)
    network = int.from_bytes(head[20:24], order)
    if nanosecond:
        return (swapped, 0) if snaplen <= _MAX_CAPLEN else None
    if major != 2 or minor < 4 or network & 0x03FFFFFF in _LIBPCAP_BIG_DLTS:
        return None
    return swapped, (snaplen if 0 < snaplen < 1 << 31 else _MAX_CAPLEN)


def _damage(nanosecond: bool, snapshot: int, bogus: bool, head: bytes, rest: int) -> str:
    """What the Python walk says of the record the C walk stopped at.

    ``head``: its first (up to 16) bytes, in native byte order for the length;
    ``rest``: the bytes left in the file from it; ``bogus``: its length is too long.
    libpcap's messages for microsecond pcap, bulk.trace's for nanosecond pcap.
    """
    caplen = int.from_bytes(head[8:12], sys.byteorder) if len(head) >= 12 else 0
    if nanosecond:
        if bogus:
            return f"corrupt record: captured length {caplen} exceeds the maximum {_MAX_CAPLEN}"
        if rest < 16:
            return f"truncated dump file: record header has {rest} of 16 bytes"
        return f"truncated dump file: record has {rest - 16} of {caplen} data bytes"
    if bogus:
        limit = f"snaplen of {snapshot}" if caplen > snapshot else f"maximum of {_MAX_CAPLEN}"
        return f"invalid packet capture length {caplen}, bigger than {limit}"
    if rest < 16:
        return f"truncated dump file; tried to read 16 header bytes, only got {rest}"
    if caplen > snapshot and rest - 16 < snapshot:
        caplen = snapshot  # libpcap 1.9 names its first read: of the snapshot length
    return f"truncated dump file; tried to read {caplen} captured bytes, only got {rest - 16}"


def _walk_native(
    path: str, linktype: int, nanosecond: bool, col: Collector, walk: _Walk
) -> _Merged | None:
    """The walk of a plain pcap file in C, records it cannot decode through ``col``.

    None (nothing done) when the C module is not there or the file is not one it
    reads exactly as the Python walk would (see :func:`_native_plan`). A damaged
    record ends the walk as it ends the Python walk (:func:`_damage`).
    """
    from bulk import native  # noqa: PLC0415

    mod = native.load("hostscan")
    if mod is None:
        return None
    with open(path, "rb", buffering=0) as f:
        plan = _native_plan(f.read(24), nanosecond)
        if plan is None:
            return None
        swapped, snapshot = plan
        decode = linktype in DECODED_LINKTYPES
        scanner = mod.Scanner(linktype, decode, swapped, nanosecond, snapshot)
        add = col.add
        buf = bytearray(max(_CHUNK, 16 + _MAX_CAPLEN))  # a whole record always fits
        view = memoryview(buf)
        have = 0
        while True:
            got = f.readinto(view[have:])
            have += got
            used, status, slow = scanner.feed(buf, have)
            for data in slow:
                add(linktype, data)
            rest = have - used
            if status < 0 or got == 0:  # a bogus record, or the end of the file
                if status < 0 or rest:
                    head = bytearray(buf[used : used + 16])
                    if swapped and len(head) >= 12:
                        head[8:12] = head[11:7:-1]
                    walk.error = _damage(nanosecond, snapshot, status < 0, bytes(head), rest)
                    walk.complete = status >= 0  # a cut record keeps the index complete
                break
            buf[:rest] = buf[used:have]
            have = rest
        del view
    scanner.end(walk.error is not None)
    walk.packets, walk.first, walk.last, walk.lo, walk.hi, walk.ordered = scanner.walk()
    addr4, addr6, ports = col.finish()
    addr4, addr6, ports, protos, l3 = scanner.finish(addr4, addr6, ports)
    return addr4, addr6, ports, col.protos | set(protos), col.l3 | set(l3)


def build_index(path: str) -> HostIndex:
    """Read the trace once and index it. A file that is not a trace raises TraceError.

    A trace cut short (TruncatedTrace) is indexed up to its last whole packet,
    which is also where libpcap stops; any other read error marks the index
    incomplete, so that it is never used to skip the trace. Plain microsecond
    pcap is read by libpcap in batches (what extraction reads it with);
    anything else through :func:`bulk.trace.open_trace`. Where the C walk
    (bulk._hostscan, :func:`_walk_native`) is built, it reads plain pcap instead
    and gives the same index, byte for byte (``BULK_NO_NATIVE=1``: the Python walk).
    """
    from bulk.trace import open_trace  # noqa: PLC0415

    st = os.stat(path)
    with open_trace(path) as probe:
        fmt = probe.format
        compression = probe.compression
        linktypes = list(probe.linktypes)
        snaplen = probe.snaplen
        nanosecond = probe.nanosecond
    col = Collector()
    walk = _Walk()
    merged = None
    if fmt == "pcap" and compression is None:
        merged = _walk_native(path, linktypes[0], nanosecond, col, walk)
    if merged is None:
        plain = fmt == "pcap" and compression is None and not nanosecond
        if not (plain and _walk_libpcap(path, linktypes[0], col, walk)):
            col = Collector()
            walk = _Walk()
            _walk_python(path, col, walk)
        addr4, addr6, ports = col.finish()
        merged = addr4, addr6, ports, col.protos, col.l3
    addr4, addr6, ports, protos, l3 = merged
    complete = walk.complete
    if col.undecoded_linktypes or any(lt not in DECODED_LINKTYPES for lt in linktypes):
        complete = False
    _compression, crc, crc_len = head_crc(path)
    meta: dict[str, Any] = {
        "version": VERSION,
        "format": fmt,
        "compression": compression,
        "linktypes": linktypes,
        "snaplen": snaplen,
        "nanosecond": nanosecond,
        "packets": walk.packets,
        "first_ns": walk.first if walk.packets else None,
        "last_ns": walk.last if walk.packets else None,
        "min_ns": walk.lo if walk.packets else None,
        "max_ns": walk.hi if walk.packets else None,
        "time_ordered": walk.ordered,
        "complete": complete,
        "error": walk.error,
        "file_size": st.st_size,
        "file_mtime_ns": st.st_mtime_ns,
        "head_crc": crc,
        "head_len": crc_len,
        "protos": sorted(protos),
        "l3": sorted(l3),
    }
    return HostIndex(meta, addr4, addr6, ports)


def index_path_for(trace_path: str) -> str:
    """The side file of a trace: ``X.pcap`` -> ``X.pcap.idx``."""
    return trace_path + INDEX_SUFFIX


def _candidates(trace_path: str) -> Iterable[str]:
    yield index_path_for(trace_path)
    for suffix in COMPRESSION_SUFFIXES:
        if trace_path.endswith(suffix):
            # Compressed, but the index was not moved along (an interrupted run).
            yield index_path_for(trace_path[: -len(suffix)])


def write_index(index: HostIndex, trace_path: str) -> str:
    """Write ``index`` as the side file of ``trace_path``, atomically; returns its path."""
    import tempfile  # noqa: PLC0415

    target = index_path_for(trace_path)
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".idx.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(index.encode())
        try:
            st = os.stat(trace_path)
            os.chmod(tmp, st.st_mode & 0o666)
        except OSError:
            pass
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def write_index_for(trace_path: str) -> str:
    """Build and write the index of a closed trace (what capture calls on rotation)."""
    return write_index(build_index(trace_path), trace_path)


def ensure_index_for(trace_path: str) -> bool:
    """Write the index of a closed trace unless a valid one exists; True if written.

    The trace being captured (``*.open``) is left alone: its index is written
    when it is closed.
    """
    if trace_path.endswith(".open") or load_index_for(trace_path) is not None:
        return False
    write_index_for(trace_path)
    return True


def remove_index_for(trace_path: str) -> bool:
    """Delete a trace's side file, if any."""
    removed = False
    for cand in _candidates(trace_path):
        try:
            os.unlink(cand)
            removed = True
        except FileNotFoundError:
            pass
    return removed


def load_index_for(trace_path: str, verify: bool = True) -> HostIndex | None:
    """The trace's index if there is one and it still describes the trace, else None."""
    for cand in _candidates(trace_path):
        try:
            with open(cand, "rb") as f:
                raw = f.read()
        except OSError:
            continue
        try:
            index = HostIndex.decode(raw)
        except (ValueError, zlib.error, KeyError, TypeError):
            continue
        if not verify or _describes(index, trace_path):
            return index
    return None


def _describes(index: HostIndex, trace_path: str) -> bool:
    """True if ``index`` describes the trace; sets its ``trace_compression``."""
    meta = index.meta
    try:
        st = os.stat(trace_path)
        if st.st_size == meta.get("file_size") and st.st_mtime_ns == meta.get("file_mtime_ns"):
            return True  # the very file indexed: no need to read it
        compression, crc, length = head_crc(trace_path)
    except (OSError, TraceError):
        return False
    if compression == meta.get("compression") and st.st_size != meta.get("file_size"):
        return False
    index.trace_compression = compression
    return crc == meta.get("head_crc") and length == meta.get("head_len")
