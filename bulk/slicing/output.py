"""The pcap a slice writes: header, re-encoded records, and verbatim byte ranges."""

from __future__ import annotations

import errno
import os
import struct
from typing import BinaryIO

from bulk.slicing.pcapfile import NS, PCAP_MAGIC_NS, PCAP_MAGIC_US, PcapFormat
from bulk.slicing.sources import SeekablePcap

_BATCH = 512


def make_format(endian: str, nanosecond: bool, snaplen: int, linktype: int) -> PcapFormat:
    """A pcap format with its 24-byte header (version 2.4, zone 0)."""
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    header = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    return PcapFormat(endian, nanosecond, snaplen, linktype, header)


class SliceSink:
    """Writes one pcap: records in ``fmt``'s byte order and resolution.

    ``copy_range`` copies records of a source in the same format verbatim
    (``os.sendfile`` from a plain file, so the bytes never enter Python).
    """

    def __init__(self, out: BinaryIO, fmt: PcapFormat) -> None:
        self.out = out
        self.fmt = fmt
        self.packets = 0
        self.bytes = 0
        self._pack = struct.Struct(fmt.endian + "IIII").pack
        self._div = 1 if fmt.nanosecond else 1000
        self._pending: list[bytes] = []
        self.out.write(fmt.header)

    def write_record(self, ts_ns: int, wirelen: int, data: bytes) -> None:
        sec, frac = divmod(ts_ns, NS)
        pending = self._pending
        try:
            pending.append(self._pack(sec, frac // self._div, len(data), wirelen))
        except struct.error:  # a (pcapng) time beyond 2106: wrapped to 32 bits, as libpcap does
            pending.append(self._pack(sec & 0xFFFFFFFF, frac // self._div, len(data), wirelen))
        pending.append(data)
        self.packets += 1
        self.bytes += len(data)
        if len(pending) >= _BATCH:
            self.out.write(b"".join(pending))
            pending.clear()

    def write_raw(self, records: bytes | memoryview) -> None:
        """Record bytes already in this sink's format (whole records)."""
        self._drain()
        self.out.write(records)

    def _drain(self) -> None:
        if self._pending:
            self.out.write(b"".join(self._pending))
            self._pending.clear()

    def copy_range(self, source: SeekablePcap, a: int, b: int) -> None:
        """Copy the record bytes [a, b) of ``source`` (its format is compatible)."""
        if b <= a:
            return
        self._drain()
        fd = getattr(source.src, "fd", -1)
        if fd >= 0 and source.kind == "pcap":
            self.out.flush()
            if self._sendfile(fd, a, b):
                source.src.bytes_read += b - a
                return
        for piece in source.chunks(a, b):
            self.out.write(piece)

    def _sendfile(self, in_fd: int, a: int, b: int) -> bool:
        try:
            out_fd = self.out.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        pos = a
        while pos < b:
            try:
                sent = os.sendfile(out_fd, in_fd, pos, b - pos)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and pos == a:
                    return False
                raise
            if sent == 0:
                break
            pos += sent
        if pos < b:
            # The file shrank under us: copy nothing more, say so.
            raise OSError(errno.EIO, f"short copy: {b - pos} bytes missing")
        return True

    def close(self) -> None:
        self._drain()
        self.out.flush()
