"""Read pcap (four variants) and pcapng traces from any stream.

``open_trace(path)`` detects the container by magic number after transparent
decompression and yields :class:`~bulk.trace.packet.Packet` records. A file that
ends mid-record yields every whole packet and then raises
:class:`~bulk.errors.TruncatedTrace`; a file that is not a trace raises
:class:`~bulk.errors.TraceError`. Both name the file and the byte offset.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from bulk.errors import TraceError, TruncatedTrace
from bulk.trace.packet import Packet
from bulk.trace.stream import READ_SIZE, TraceStream

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
# libpcap refuses records larger than this (or than the snaplen, if larger).
MAX_SNAPLEN = 262144
# A pcapng block larger than this is treated as corruption, as libpcap does.
MAX_BLOCK = 16 * 1024 * 1024


class TraceReader:
    """An open trace. Iterate it for packets; use it as a context manager.

    Attributes known after opening: ``format`` ("pcap" or "pcapng"),
    ``compression`` (None, "gzip", "zstd"), ``linktype`` (the first
    interface's), ``nanosecond`` (the file's resolution is finer than 1 us),
    ``snaplen``, ``byte_order``. ``linktypes`` grows as pcapng interfaces are
    met. ``offset`` is the byte offset (in the decompressed stream) of the
    next record.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stream = TraceStream(path)
        self.compression = self._stream.compression
        self._f: BinaryIO = self._stream.file
        self.offset = 0
        self.linktypes: list[int] = []
        self.nanosecond = False
        self.snaplen = 0
        self.byte_order = "little"
        try:
            head = self._f.read(4)
            if len(head) == 0:
                raise TraceError(path, 0, "empty file, not a trace")
            if len(head) < 4:
                raise TraceError(path, 0, f"too short for a trace ({len(head)} bytes)")
            magic_le = int.from_bytes(head, "little")
            magic_be = int.from_bytes(head, "big")
            if magic_le == PCAPNG_SHB:
                self.format = "pcapng"
                self._iter = self._pcapng(head)
            elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
                self.format = "pcap"
                endian = "<" if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
                self.byte_order = "little" if endian == "<" else "big"
                self.nanosecond = PCAP_MAGIC_NS in (magic_le, magic_be)
                self._iter = self._pcap(endian)
            else:
                raise TraceError(
                    path, 0, f"not a pcap or pcapng trace (starts with {head.hex(' ')})"
                )
            # Prime the generator so that header errors surface at open time.
            self._first: Packet | None = next(self._iter, None)
        except BaseException:
            self._stream.close()
            raise

    @property
    def linktype(self) -> int:
        return self.linktypes[0] if self.linktypes else -1

    def __iter__(self) -> Iterator[Packet]:
        first = self._first
        if first is None:
            return
        self._first = None
        yield first
        yield from self._iter

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pcap ---------------------------------------------------------------

    def _pcap(self, endian: str) -> Iterator[Packet]:
        path = self.path
        rest = self._f.read(20)
        if len(rest) < 20:
            raise TruncatedTrace(
                path, 4, f"pcap file header cut short ({4 + len(rest)} of 24 bytes)"
            )
        _vmaj, _vmin, _zone, _sigfigs, snaplen, network = struct.unpack(endian + "HHiIII", rest)
        self.snaplen = snaplen
        linktype = network & 0xFFFF
        self.linktypes.append(linktype)
        maxcap = max(snaplen, MAX_SNAPLEN)
        mult = 1 if self.nanosecond else 1000
        unpack = struct.Struct(endian + "IIII").unpack_from
        read = self._f.read
        buf = b""
        pos = 0
        base = 24  # file offset of buf[0]
        try:
            while True:
                avail = len(buf) - pos
                if avail < 16:
                    more = read(READ_SIZE)
                    if not more:
                        if avail == 0:
                            return
                        raise TruncatedTrace(
                            path,
                            base + pos,
                            f"truncated dump file: record header has {avail} of 16 bytes",
                        )
                    buf = buf[pos:] + more
                    base += pos
                    pos = 0
                    continue
                sec, frac, caplen, wirelen = unpack(buf, pos)
                if caplen > maxcap:
                    raise TraceError(
                        path,
                        base + pos,
                        f"corrupt record: captured length {caplen} exceeds the maximum {maxcap}",
                    )
                end = pos + 16 + caplen
                if end > len(buf):
                    more = read(max(READ_SIZE, end - len(buf)))
                    if not more:
                        raise TruncatedTrace(
                            path,
                            base + pos,
                            f"truncated dump file: record has {avail - 16} of {caplen} data bytes",
                        )
                    buf = buf[pos:] + more
                    base += pos
                    pos = 0
                    continue
                yield Packet(
                    sec * 1_000_000_000 + frac * mult, wirelen, linktype, buf[pos + 16 : end]
                )
                pos = end
        finally:
            self.offset = base + pos

    # -- pcapng -------------------------------------------------------------

    def _pcapng(self, head: bytes) -> Iterator[Packet]:
        path = self.path
        read = self._f.read
        offset = 0
        endian = "<"
        # Per interface: (linktype, snaplen, ticks per second, offset seconds).
        ifaces: list[tuple[int, int, int, int]] = []
        pending = head
        while True:
            self.offset = offset
            hdr = pending + read(8 - len(pending))
            pending = b""
            if len(hdr) == 0:
                return
            if len(hdr) < 8:
                raise TruncatedTrace(
                    path, offset, f"truncated block header ({len(hdr)} of 8 bytes)"
                )
            btype = int.from_bytes(hdr[:4], "little" if endian == "<" else "big")
            if btype == PCAPNG_SHB:
                bom_raw = read(4)
                if len(bom_raw) < 4:
                    raise TruncatedTrace(path, offset, "truncated section header block")
                if int.from_bytes(bom_raw, "little") == PCAPNG_BYTE_ORDER:
                    endian = "<"
                elif int.from_bytes(bom_raw, "big") == PCAPNG_BYTE_ORDER:
                    endian = ">"
                else:
                    raise TraceError(path, offset + 8, "bad pcapng byte-order magic")
                self.byte_order = "little" if endian == "<" else "big"
                (blen,) = struct.unpack(endian + "I", hdr[4:8])
                body_len = blen - 12  # after the byte-order magic, with the trailer
                if blen < 28 or blen % 4 or blen > MAX_BLOCK:
                    raise TraceError(path, offset, f"bad section header block length {blen}")
                body = read(body_len)
                if len(body) < body_len:
                    raise TruncatedTrace(path, offset, "truncated section header block")
                ifaces = []
                offset += blen
                continue
            (blen,) = struct.unpack(endian + "I", hdr[4:8])
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                raise TraceError(path, offset, f"corrupt pcapng block: length {blen}")
            body = read(blen - 8)
            if len(body) < blen - 8:
                raise TruncatedTrace(
                    path, offset, f"truncated block: {8 + len(body)} of {blen} bytes present"
                )
            data = body[:-4]
            if btype == 1:  # interface description
                if len(data) < 8:
                    raise TraceError(path, offset, "short interface description block")
                linktype, _res, snaplen = struct.unpack_from(endian + "HHI", data)
                tps, tsoff = self._idb_options(data[8:], endian)
                ifaces.append((linktype, snaplen, tps, tsoff))
                if linktype not in self.linktypes:
                    self.linktypes.append(linktype)
                if not self.snaplen:
                    self.snaplen = snaplen
                if tps > 1_000_000:
                    self.nanosecond = True
            elif btype in (6, 2):  # enhanced / obsolete packet block
                if len(data) < 20:
                    raise TraceError(path, offset, "short packet block")
                if btype == 6:
                    ifid, hi, lo, caplen, wirelen = struct.unpack_from(endian + "IIIII", data)
                else:
                    ifid, _drops, hi, lo, caplen, wirelen = struct.unpack_from(
                        endian + "HHIIII", data
                    )
                if ifid >= len(ifaces):
                    raise TraceError(path, offset, f"packet names unknown interface {ifid}")
                if caplen > len(data) - 20:
                    raise TraceError(
                        path, offset, f"corrupt packet block: captured length {caplen} too large"
                    )
                linktype, _snap, tps, tsoff = ifaces[ifid]
                ts = (hi << 32) | lo
                self.offset = offset + blen
                yield Packet(
                    _ticks_to_ns(ts, tps, tsoff), wirelen, linktype, data[20 : 20 + caplen]
                )
            elif btype == 3:  # simple packet block: interface 0
                if not ifaces:
                    raise TraceError(path, offset, "simple packet block before any interface")
                linktype, snaplen, _tps, _off = ifaces[0]
                (wirelen,) = struct.unpack_from(endian + "I", data)
                caplen = min(wirelen, snaplen) if snaplen else wirelen
                caplen = min(caplen, len(data) - 4)
                self.offset = offset + blen
                yield Packet(0, wirelen, linktype, data[4 : 4 + caplen])
            offset += blen

    @staticmethod
    def _idb_options(opts: bytes, endian: str) -> tuple[int, int]:
        tps = 1_000_000
        tsoff = 0
        i = 0
        while i + 4 <= len(opts):
            code, length = struct.unpack_from(endian + "HH", opts, i)
            value = opts[i + 4 : i + 4 + length]
            if code == 0:
                break
            # len(value), not length: a corrupt option may run past the block's end.
            if code == 9 and len(value) >= 1:  # if_tsresol
                r = value[0]
                tps = 2 ** (r & 0x7F) if r & 0x80 else 10**r
            elif code == 14 and len(value) >= 8:  # if_tsoffset (seconds)
                (tsoff,) = struct.unpack_from(endian + "q", value)
            i += 4 + ((length + 3) & ~3)
        return tps, tsoff


def _ticks_to_ns(ticks: int, tps: int, offset_s: int) -> int:
    if tps == 1_000_000:
        ns = ticks * 1000
    elif tps == 1_000_000_000:
        ns = ticks
    else:
        ns = ticks * 1_000_000_000 // tps
    return ns + offset_s * 1_000_000_000


def open_trace(path: str) -> TraceReader:
    """Open a trace file (``-`` is stdin), decompressing gzip or zstd on the fly."""
    return TraceReader(path)
