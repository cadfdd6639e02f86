"""Whole pcap records in large chunks, for hot loops that decode in place.

:func:`pcap_chunks` reads a classic pcap trace file (any of the four
variants, plain or gzip/zstd-compressed) and yields :class:`RecordChunk`
objects: a buffer of about a megabyte and the offsets of the whole records in
it. A consumer unpacks each 16-byte record header with ``chunk.header`` and
decodes the packet bytes where they lie, without building a
:class:`~bulk.trace.packet.Packet` or copying the bytes (the flow table's
fast path does this). The same errors as :func:`bulk.trace.open_trace`: a
record cut by the end of the file raises
:class:`~bulk.errors.TruncatedTrace` after every whole record was delivered.

pcapng traces are not handled here (``pcap_chunks`` returns ``None``): use
:func:`bulk.trace.iter_packets` for them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from bulk.errors import TraceError, TruncatedTrace
from bulk.trace.reader import MAX_SNAPLEN, PCAP_MAGIC_NS, PCAP_MAGIC_US
from bulk.trace.stream import TraceStream

CHUNK_SIZE = 1 << 20

_LE = struct.Struct("<IIII")
_BE = struct.Struct(">IIII")


class RecordChunk(NamedTuple):
    """Whole pcap records: ``header.unpack_from(buf, off)`` gives
    ``(sec, frac, caplen, wirelen)`` for each ``off`` in ``offsets``; the
    packet bytes are ``buf[off + 16 : off + 16 + caplen]``; the time in ns is
    ``sec * 1_000_000_000 + frac * frac_ns``."""

    buf: bytes
    offsets: list[int]
    header: struct.Struct
    frac_ns: int
    linktype: int


def pcap_chunks(path: str) -> Iterator[RecordChunk] | None:
    """Chunks of ``path`` if it is a classic pcap trace, else ``None`` (pcapng,
    or standard input, whose first bytes could not be given back to another
    reader).

    Raises :class:`~bulk.errors.TraceError` if the file is not a trace.
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
            return _chunks(stream, path, head, le in (PCAP_MAGIC_US, PCAP_MAGIC_NS))
    stream.close()
    return None


def _chunks(stream: TraceStream, path: str, head: bytes, little: bool) -> Iterator[RecordChunk]:
    endian = "<" if little else ">"
    magic, _maj, _min, _zone, _sig, snaplen, network = struct.unpack(endian + "IHHiIII", head)
    frac_ns = 1 if magic == PCAP_MAGIC_NS else 1000
    linktype = network & 0xFFFF
    hdr = _LE if little else _BE
    unpack = hdr.unpack_from
    maxcap = max(snaplen, MAX_SNAPLEN)
    read = stream.file.read
    base = 24  # file offset of buf[0]
    buf = b""
    try:
        while True:
            more = read(CHUNK_SIZE)
            if not more:
                if buf:
                    if len(buf) < 16:
                        reason = f"record header has {len(buf)} of 16 bytes"
                    else:
                        caplen = unpack(buf, 0)[2]
                        reason = f"record has {len(buf) - 16} of {caplen} data bytes"
                    raise TruncatedTrace(path, base, f"truncated dump file: {reason}")
                return
            buf = buf + more if buf else more
            n = len(buf)
            pos = 0
            offsets: list[int] = []
            append = offsets.append
            while pos + 16 <= n:
                caplen = unpack(buf, pos)[2]
                if caplen > maxcap:
                    if offsets:
                        yield RecordChunk(buf, offsets, hdr, frac_ns, linktype)
                    raise TraceError(
                        path,
                        base + pos,
                        f"corrupt record: captured length {caplen} exceeds the maximum {maxcap}",
                    )
                end = pos + 16 + caplen
                if end > n:
                    break
                append(pos)
                pos = end
            if offsets:
                yield RecordChunk(buf, offsets, hdr, frac_ns, linktype)
            buf = buf[pos:]
            base += pos
    finally:
        stream.close()
