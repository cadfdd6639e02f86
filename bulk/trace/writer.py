"""Write classic pcap (micro- or nanosecond) to a file, a path or stdout."""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

from bulk.errors import UsageError
from bulk.trace.packet import Packet
from bulk.trace.reader import PCAP_MAGIC_NS, PCAP_MAGIC_US

DEFAULT_SNAPLEN = 262144
_FILE_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")


def pcap_header(linktype: int, snaplen: int = DEFAULT_SNAPLEN, nanosecond: bool = False) -> bytes:
    """The 24-byte pcap file header (little endian)."""
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    return _FILE_HEADER.pack(magic, 2, 4, 0, 0, snaplen, linktype)


def record_header(ts_ns: int, caplen: int, wirelen: int, nanosecond: bool = False) -> bytes:
    """The 16-byte pcap record header for one packet."""
    sec, frac = divmod(ts_ns, 1_000_000_000)
    if not nanosecond:
        frac //= 1000
    return _RECORD_HEADER.pack(sec, frac, caplen, wirelen)


class PcapWriter:
    """Write packets as pcap. ``target`` is a path, ``-`` (stdout) or a binary file.

    Writing stops with a UsageError when asked to write a packet of another
    link type, since pcap holds one link type per file.
    """

    def __init__(
        self,
        target: str | BinaryIO,
        linktype: int,
        snaplen: int = DEFAULT_SNAPLEN,
        nanosecond: bool = False,
    ) -> None:
        self._owns = False
        if isinstance(target, str):
            if target == "-":
                self._f: BinaryIO = sys.stdout.buffer
            else:
                self._f = open(target, "wb")  # noqa: SIM115 - closed in close()
                self._owns = True
        else:
            self._f = target
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.packets = 0
        self.bytes = 0
        self._pack = _RECORD_HEADER.pack
        self._f.write(pcap_header(linktype, snaplen, nanosecond))

    def write(self, pkt: Packet) -> None:
        if pkt.linktype != self.linktype:
            raise UsageError(
                f"cannot write link type {pkt.linktype} into a pcap of link type {self.linktype}"
            )
        self.write_record(pkt.ts_ns, pkt.wirelen, pkt.data)

    def write_record(self, ts_ns: int, wirelen: int, data: bytes) -> None:
        sec, frac = divmod(ts_ns, 1_000_000_000)
        if not self.nanosecond:
            frac //= 1000
        n = len(data)
        self._f.write(self._pack(sec, frac, n, wirelen))
        self._f.write(data)
        self.packets += 1
        self.bytes += n

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if self._owns:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
