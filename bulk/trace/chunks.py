"""A classic pcap trace in large buffers, for hot loops that decode in place.

:func:`pcap_records` opens a classic pcap trace file (any of the four
variants, plain or gzip/zstd-compressed) and returns a :class:`PcapRecords`
reader. Its consumer walks the records of each buffer itself::

    buf = records.refill(b"")
    while buf is not None:
        pos = 0
        while pos + 16 <= len(buf):
            sec, frac, caplen, wirelen = records.header.unpack_from(buf, pos)
            if caplen > records.maxcap:
                records.corrupt(buf, pos, caplen)       # raises TraceError
            if pos + 16 + caplen > len(buf):
                break                                   # record continues in the next read
            ...  # packet bytes: buf[pos + 16 : pos + 16 + caplen]
            pos += 16 + caplen
        buf = records.refill(buf[pos:])

so no :class:`~bulk.trace.packet.Packet` is built and no bytes are copied
(the flow table's fast path does this). Errors are those of
:func:`bulk.trace.open_trace`: a record cut by the end of the file raises
:class:`~bulk.errors.TruncatedTrace` from ``refill`` after every whole record
was handed out.

pcapng traces and standard input are not handled here (``pcap_records``
returns ``None``): use :func:`bulk.trace.iter_packets` for them.
"""

from __future__ import annotations

import struct

from bulk.errors import TraceError, TruncatedTrace
from bulk.trace.reader import MAX_SNAPLEN, PCAP_MAGIC_NS, PCAP_MAGIC_US
from bulk.trace.stream import TraceStream

CHUNK_SIZE = 1 << 20

_LE = struct.Struct("<IIII")
_BE = struct.Struct(">IIII")


class PcapRecords:
    """An open classic pcap trace read in ``CHUNK_SIZE`` buffers.

    ``header.unpack_from(buf, pos)`` gives ``(sec, frac, caplen, wirelen)``;
    the time in ns is ``sec * 1_000_000_000 + frac * frac_ns``.
    """

    def __init__(self, stream: TraceStream, path: str, head: bytes, little: bool) -> None:
        endian = "<" if little else ">"
        magic, _maj, _min, _zone, _sig, snaplen, network = struct.unpack(endian + "IHHiIII", head)
        self.path = path
        self.header = _LE if little else _BE
        self.frac_ns = 1 if magic == PCAP_MAGIC_NS else 1000
        self.linktype = network & 0xFFFF
        self.maxcap = max(snaplen, MAX_SNAPLEN)
        self._stream: TraceStream | None = stream
        self._read = stream.file.read
        self._total = 24  # bytes read from the stream so far
        self._buf_offset = 24  # file offset of the current buffer's first byte

    def refill(self, rest: bytes) -> bytes | None:
        """The unconsumed ``rest`` of the last buffer plus the next read; None at the end.

        Raises TruncatedTrace when the file ends inside a record.
        """
        if self._stream is None:
            return None
        rest_offset = self._total - len(rest)
        more = self._read(CHUNK_SIZE)
        if not more:
            self.close()
            if rest:
                if len(rest) < 16:
                    reason = f"record header has {len(rest)} of 16 bytes"
                else:
                    caplen = self.header.unpack_from(rest, 0)[2]
                    reason = f"record has {len(rest) - 16} of {caplen} data bytes"
                raise TruncatedTrace(self.path, rest_offset, f"truncated dump file: {reason}")
            return None
        self._total += len(more)
        self._buf_offset = rest_offset
        return rest + more if rest else more

    def corrupt(self, buf: bytes, pos: int, caplen: int) -> None:
        """Raise the error for a record whose captured length cannot be right."""
        self.close()
        raise TraceError(
            self.path,
            self._buf_offset + pos,
            f"corrupt record: captured length {caplen} exceeds the maximum {self.maxcap}",
        )

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def pcap_records(path: str) -> PcapRecords | None:
    """A :class:`PcapRecords` reader if ``path`` is a classic pcap trace file, else None.

    None for pcapng, and for standard input (``-``), whose first bytes could
    not be given back to another reader. Raises
    :class:`~bulk.errors.TraceError` if the file is not a trace.
    """
    if path == "-":
        return None
    stream = TraceStream(path)
    try:
        head = stream.file.read(24)
    except BaseException:
        stream.close()
        raise
    if len(head) >= 4:
        le = int.from_bytes(head[:4], "little")
        be = int.from_bytes(head[:4], "big")
        if le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            if len(head) < 24:
                stream.close()
                raise TruncatedTrace(
                    path, 0, f"pcap file header cut short ({len(head)} of 24 bytes)"
                )
            return PcapRecords(stream, path, head, le in (PCAP_MAGIC_US, PCAP_MAGIC_NS))
    stream.close()
    return None
