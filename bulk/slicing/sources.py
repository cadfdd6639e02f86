"""One input trace as a sliceable source, whatever its container and compression.

Three kinds, chosen by magic number (never by name):

``pcap``
    An uncompressed pcap file: first and last packet from a few small reads
    at the head and the tail; the window found by interpolation search
    (:class:`~bulk.slicing.pcapfile.PcapFile`); its bytes copied verbatim.
``pcap+zstd``
    A zstd-compressed pcap in several frames: the same search over the
    decompressed view, decompressing only the frames touched
    (:class:`~bulk.slicing.zstdframes.ZstdFrames`).
``stream``
    Anything else the trace layer reads (pcapng, gzip, a single-frame zstd,
    stdin): read from the start through :func:`bulk.trace.open_trace`,
    skipping to the window and stopping after it.

A source yields ``(ts_ns, wirelen, data)`` records for a window, in file order.
Like tcpslice, it assumes the file is in time order: reading stops at the
first packet after the window. A packet that goes back in time is still
delivered if inside the window, and counted in ``backwards`` so the caller can
warn; ``scan_all`` reads every packet instead (exact for unordered files).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from bulk.errors import TraceError
from bulk.slicing.pcapfile import (
    FILE_HEADER_LEN,
    MAX_SNAPLEN,
    NS,
    RECORD_HEADER_LEN,
    SCAN_READ,
    ByteSource,
    FileBytes,
    PcapFile,
    PcapFormat,
    iter_buffer,
    parse_pcap_header,
    window_spans,
)

if TYPE_CHECKING:
    from bulk.trace.packet import Packet
    from bulk.trace.seekable import SeekableTrace

RawRecord = tuple[int, int, bytes]  # ts_ns, wirelen, data
# What is read of a compressed trace's first frame for its file header: it is in
# the first block, and a zstd block is at most 128 KiB (more is read if not).
HEAD_READ = 129 * 1024


class Segment(NamedTuple):
    """Bytes [offset, end) of a pcap holding whole records with times in [min, max]."""

    offset: int
    end: int
    min_ns: int
    max_ns: int


class Window(NamedTuple):
    """Inclusive time bounds in ns (None: unbounded)."""

    start_ns: int | None
    end_ns: int | None


class Source:
    """One input file. ``first_ns``/``last_ns`` are None when unknown (no
    packets, or the last time of a stream that has not been read)."""

    path: str
    kind: str
    fmt: PcapFormat | None  # the pcap header; None for pcapng
    linktype: int
    linktypes: list[int]
    nanosecond: bool
    snaplen: int
    first_ns: int | None
    last_ns: int | None
    backwards: int = 0  # packets seen going back in time while slicing
    packets: int = 0  # packets delivered
    error: TraceError | None = None  # a read error met while slicing, reported at the end

    @property
    def bytes_read(self) -> int:
        return 0

    @property
    def seekable(self) -> bool:
        return False

    def records(self, window: Window, scan_all: bool = False) -> Iterator[RawRecord]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SeekablePcap(Source):
    """An uncompressed pcap, or a multi-frame zstd pcap, with random access."""

    def __init__(self, src: ByteSource, kind: str) -> None:
        self.path = src.path
        self.kind = kind
        self.src = src
        self.pf = PcapFile(src)
        fmt = self.pf.fmt
        self.fmt = fmt
        self.linktype = fmt.linktype
        self.linktypes = [fmt.linktype]
        self.nanosecond = fmt.nanosecond
        self.snaplen = fmt.snaplen
        self.first_ns = self.pf.first.ts_ns if self.pf.first else None
        self.last_ns = self.pf.last.ts_ns if self.pf.last else None
        self.backwards = 0
        self.packets = 0
        self.segments: list[Segment] | None = None

    def use_segments(self, segments: list[Segment]) -> bool:
        """Adopt a time index (the catalogue's): consecutive byte segments with the
        lowest and highest time of their records. Slicing is then exact whatever
        the order of the packets. False (and ignored) if it does not fit the file."""
        pf = self.pf
        if (
            not segments
            or segments[0].offset != FILE_HEADER_LEN
            or segments[-1].end != pf.data_end
            or any(a.end != b.offset for a, b in itertools.pairwise(segments))
        ):
            return False
        self.segments = segments
        self.first_ns = min(seg.min_ns for seg in segments)
        self.last_ns = max(seg.max_ns for seg in segments)
        return True

    def pieces(self, window: Window) -> Iterator[tuple[int, int] | bytes]:
        """With segments: byte ranges of the segments wholly inside the window, and
        the in-window record bytes of the segments at its edges, in file order."""
        assert self.segments is not None
        start, end = window.start_ns, window.end_ns
        run: tuple[int, int] | None = None
        for seg in self.segments:
            if (end is not None and seg.min_ns > end) or (start is not None and seg.max_ns < start):
                continue
            if (start is None or seg.min_ns >= start) and (end is None or seg.max_ns <= end):
                if run is not None and run[1] == seg.offset:
                    run = (run[0], seg.end)  # adjacent: one longer range
                else:
                    if run is not None:
                        yield run
                    run = (seg.offset, seg.end)
                continue
            if run is not None:
                yield run
                run = None
            yield from self._filtered(seg, window)
        if run is not None:
            yield run

    def _filtered(self, seg: Segment, window: Window) -> Iterator[bytes]:
        assert self.fmt is not None
        data = self.src.read(seg.offset, seg.end - seg.offset)
        start, end = window.start_ns, window.end_ns
        span = -1
        pos = 0
        for off, ts, caplen, _w in iter_buffer(data, 0, self.fmt):
            inside = (start is None or ts >= start) and (end is None or ts <= end)
            if inside and span < 0:
                span = off
            elif not inside and span >= 0:
                yield data[span:off]
                span = -1
            pos = off + RECORD_HEADER_LEN + caplen
        if span >= 0:
            yield data[span:pos]

    @property
    def bytes_read(self) -> int:
        return self.src.bytes_read

    @property
    def seekable(self) -> bool:
        return True

    def byte_range(self, window: Window) -> tuple[int, int]:
        """[a, b): the records within the window, assuming time order."""
        pf = self.pf
        if pf.first is None:
            return pf.data_end, pf.data_end
        a = pf.first.offset if window.start_ns is None else pf.find_time(window.start_ns)
        if window.end_ns is None or a >= pf.data_end:
            return a, pf.data_end
        b = pf.find_time(window.end_ns + 1, lo=pf.record(a))
        return a, max(a, b)

    def records(self, window: Window, scan_all: bool = False) -> Iterator[RawRecord]:
        if self.segments is not None and not scan_all:
            yield from self._segment_records(window)
            return
        pf = self.pf
        if scan_all or pf.first is None:
            a, b, stop = FILE_HEADER_LEN, pf.data_end, False
        else:
            a, _b = self.byte_range(window)
            b, stop = pf.data_end, True
        start = window.start_ns
        end = window.end_ns
        last = -1
        for ts, wirelen, data in pf.packets(a, b):
            if ts < last:
                self.backwards += 1
            else:
                last = ts
            if end is not None and ts > end:
                if stop:
                    return
                continue
            if start is not None and ts < start:
                continue
            self.packets += 1
            yield ts, wirelen, data

    def _segment_records(self, window: Window) -> Iterator[RawRecord]:
        assert self.fmt is not None
        fmt = self.fmt
        for piece in self.pieces(window):
            if isinstance(piece, tuple):
                a, b = piece
                for ts, wirelen, data in self.pf.packets(a, b):
                    self.packets += 1
                    yield ts, wirelen, data
                continue
            for off, ts, caplen, wirelen in iter_buffer(piece, 0, fmt):
                self.packets += 1
                j = off + RECORD_HEADER_LEN
                yield ts, wirelen, piece[j : j + caplen]

    def chunks(self, a: int, b: int) -> Iterator[bytes]:
        """The raw bytes [a, b) in pieces (for a source that is not a plain file)."""
        pos = a
        while pos < b:
            piece = self.src.read(pos, min(SCAN_READ * 4, b - pos))
            if not piece:
                raise TraceError(self.path, pos, "unexpected end of data")
            yield piece
            pos += len(piece)

    def close(self) -> None:
        self.pf.close()


class StreamSource(Source):
    """A trace read from the start through the trace layer (pcapng, gzip, stdin...)."""

    def __init__(self, path: str) -> None:
        from bulk.trace import open_trace  # noqa: PLC0415 - only streams need it

        self.path = path
        self.kind = "stream"
        self._open = open_trace
        reader = open_trace(path)
        self._reader = reader if path == "-" else None  # stdin can be read only once
        try:
            it = iter(reader)
            first = next(it, None)
            self._pending = first
            self._iter = it if path == "-" else None
            self.compression = reader.compression
            self.format = reader.format
            self.linktype = reader.linktype if reader.linktype >= 0 else 1
            self.linktypes = list(reader.linktypes) or [self.linktype]
            self.nanosecond = reader.nanosecond
            self.snaplen = reader.snaplen or 262144
            self.fmt = None
            if reader.format == "pcap":
                from bulk.trace import pcap_header  # noqa: PLC0415

                endian = "<" if reader.byte_order == "little" else ">"
                self.fmt = PcapFormat(
                    endian,
                    reader.nanosecond,
                    reader.snaplen,
                    self.linktype,
                    pcap_header(self.linktype, reader.snaplen, reader.nanosecond),
                )
            self.first_ns = first.ts_ns if first is not None else None
            self.last_ns = None
        finally:
            if path != "-":
                reader.close()
        self.backwards = 0
        self.packets = 0
        self.kind = "stream" if self.compression is None else f"stream+{self.compression}"

    def records(self, window: Window, scan_all: bool = False) -> Iterator[RawRecord]:
        start = window.start_ns
        end = window.end_ns
        last = -1
        if self._reader is not None:
            reader = self._reader
            assert self._iter is not None
            it = self._iter
            pending = self._pending
            self._pending = None
        else:
            reader = self._open(self.path)
            it = iter(reader)
            pending = None
        try:
            if pending is not None:
                stream: Iterator[Packet] = _chain_one(pending, it)
            else:
                stream = it
            for pkt in _deferring(stream, self):
                ts, wirelen, linktype, data = pkt
                if linktype not in self.linktypes:
                    self.linktypes.append(linktype)
                if ts < last:
                    self.backwards += 1
                else:
                    last = ts
                if end is not None and ts > end:
                    if scan_all:
                        continue
                    return
                if start is not None and ts < start:
                    continue
                if linktype != self.linktype:
                    raise TraceError(
                        self.path,
                        None,
                        f"packets of link type {linktype} after link type {self.linktype}: "
                        "a pcap output holds one link type",
                    )
                self.packets += 1
                yield ts, wirelen, data
        finally:
            reader.close()

    def read_last(self) -> int | None:
        """Read the whole stream for its last packet time (for --list)."""
        if self.path == "-":
            return self.last_ns
        last = None
        with self._open(self.path) as reader:
            for pkt in reader:
                last = pkt.ts_ns
        self.last_ns = last
        return last

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class IndexedSource(Source):
    """A trace compressed by ``bulk compress``: frames on packet boundaries with an
    index of their first/last/min/max times (:mod:`bulk.trace.seekable`).

    Only the frames whose [min, max] meets the window are decompressed; frames
    wholly inside it are copied as they are, the two at its edges are filtered
    record by record. This is exact even for a file that is not in time order.
    """

    def __init__(self, st: SeekableTrace) -> None:
        self.st = st
        self.path = st.path
        lay = st.layout
        self.kind = f"{lay.kind}+{st.compression}-index"
        self.compression = st.compression
        self._read = max(0, file_size(st.path) - sum(f.comp_size for f in st.frames))
        # The earliest and latest packet (the same as the first and last for a
        # file in time order), so that an unordered file is never ruled out.
        lows = [f.min_ts for f in st.frames if f.packets and f.min_ts is not None]
        highs = [f.max_ts for f in st.frames if f.packets and f.max_ts is not None]
        self.first_ns = min(lows) if lows else None
        self.last_ns = max(highs) if highs else None
        self.nanosecond = lay.nanosecond
        self.snaplen = lay.snaplen or MAX_SNAPLEN
        self.backwards = 0
        self.packets = 0
        self.fmt = None
        if lay.kind == "pcap":
            fmt = parse_pcap_header(self._file_header()) if st.frames else None
            if fmt is None:
                raise TraceError(self.path, 0, "compressed trace does not start with a pcap header")
            self.fmt = fmt
            self.linktype = fmt.linktype
        else:
            first = next(iter(self._pcapng_packets(Window(None, None), limit=1)), None)
            self.linktype = first.linktype if first is not None else 1
        self.linktypes = [self.linktype]

    @property
    def bytes_read(self) -> int:
        return self._read

    def _file_header(self) -> bytes:
        """The first bytes of frame 0, decoding no more of it than that: the
        frame itself (4 MiB from bulk compress) is decoded only if the window
        needs it, so opening a compressed trace costs a small read, not a decode.
        The header is in the frame's first block (at most 128 KiB compressed):
        the whole frame (1.6 MB on the bench trace) is read only if not."""
        import zlib  # noqa: PLC0415

        from bulk.trace.zstdframe import head  # noqa: PLC0415

        size = self.st.frames[0].comp_size
        for limit in (HEAD_READ, size):
            comp = self._compressed(0, limit)
            try:
                if self.st.compression == "zstd":
                    data = head(comp, FILE_HEADER_LEN)
                else:
                    data = zlib.decompressobj(31).decompress(comp, FILE_HEADER_LEN)
            except (ValueError, zlib.error) as exc:
                offset = self.st.frames[0].comp_offset
                raise TraceError(self.path, offset, f"frame 0 corrupt: {exc}") from None
            if len(data) >= FILE_HEADER_LEN or limit >= size:
                break
        return data

    def _compressed(self, k: int, limit: int | None = None) -> bytes:
        comp = self.st.read_compressed(k, limit)
        self._read += len(comp)
        return comp

    def _candidates(self, window: Window) -> list[int]:
        end = None if window.end_ns is None else window.end_ns + 1
        return self.st.frames_between(window.start_ns, end)

    def _inside(self, k: int, window: Window) -> bool:
        f = self.st.frames[k]
        if f.min_ts is None or f.max_ts is None or k == len(self.st.frames) - 1:
            return False  # the last frame may end in a damaged tail: walk it
        lo_ok = window.start_ns is None or f.min_ts >= window.start_ns
        return lo_ok and (window.end_ns is None or f.max_ts <= window.end_ns)

    def _decoded(self, window: Window) -> Iterator[tuple[int, bytes, int]]:
        """(frame, bytes, offset of its first record) for the candidate frames, in
        order. Frames are read here and decompressed up to three ahead on two
        threads (zstd and zlib release the GIL), overlapping the caller's writing."""
        from concurrent.futures import Future, ThreadPoolExecutor  # noqa: PLC0415

        ks = self._candidates(window)
        if not ks:
            return
        with ThreadPoolExecutor(2, thread_name_prefix="bulk-slice") as pool:
            ahead: deque[tuple[int, Future[bytes]]] = deque()
            it = iter(ks)
            while True:
                while len(ahead) < 3:
                    k = next(it, -1)
                    if k < 0:
                        break
                    ahead.append((k, pool.submit(self.st.decompress, k, self._compressed(k))))
                if not ahead:
                    return
                k, fut = ahead.popleft()
                yield k, fut.result(), (self.st.layout.header_len if k == 0 else 0)

    def _decoded_reused(self, window: Window) -> Iterator[tuple[int, bytes | memoryview, int]]:
        """As :meth:`_decoded`, each frame in a buffer that is reused once the next
        is asked for (:meth:`SeekableTrace.frames_reused`), when the trace allows."""
        st = self.st
        if not st.can_reuse_buffers():
            yield from self._decoded(window)
            return
        frames = st.frames
        for k, view in st.frames_reused(self._candidates(window)):
            self._read += frames[k].comp_size
            yield k, view, (st.layout.header_len if k == 0 else 0)

    def raw_pieces(self, window: Window) -> Iterator[bytes | memoryview]:
        """The window's record bytes, in file order (pcap only). A piece may be a
        view of a buffer that is reused: write it before asking for the next."""
        fmt = self.fmt
        assert fmt is not None
        start, end = window.start_ns, window.end_ns
        for k, data, pos in self._decoded_reused(window):
            if self._inside(k, window):
                yield data[pos:] if pos else data
                continue
            spans, _stop = window_spans(data, pos, fmt, start, end)
            for a, b in spans:
                yield data[a:b]

    def records(self, window: Window, scan_all: bool = False) -> Iterator[RawRecord]:
        if self.fmt is None:
            for pkt in self._pcapng_packets(window):
                self.packets += 1
                yield pkt.ts_ns, pkt.wirelen, pkt.data
            return
        start, end = window.start_ns, window.end_ns
        fmt = self.fmt
        for _k, data, pos in self._decoded(window):
            for off, ts, caplen, wirelen in iter_buffer(data, pos, fmt):
                if (start is None or ts >= start) and (end is None or ts <= end):
                    self.packets += 1
                    j = off + RECORD_HEADER_LEN
                    yield ts, wirelen, data[j : j + caplen]

    def _pcapng_packets(self, window: Window, limit: int = 0) -> Iterator[Packet]:
        ks = (
            self._candidates(window)
            if limit == 0
            else [k for k, f in enumerate(self.st.frames) if f.packets][:1]
        )
        runs: list[tuple[int, int]] = []
        for k in ks:
            if runs and runs[-1][1] == k:
                runs[-1] = (runs[-1][0], k + 1)
            else:
                runs.append((k, k + 1))
        n = 0
        for i, j in runs:
            self._read += sum(f.comp_size for f in self.st.frames[i:j])
            for pkt in self.st.packets_in(i, j):
                if (window.start_ns is None or pkt.ts_ns >= window.start_ns) and (
                    window.end_ns is None or pkt.ts_ns <= window.end_ns
                ):
                    yield pkt
                    n += 1
                    if limit and n >= limit:
                        return

    def close(self) -> None:
        self.st.close()


def _deferring(stream: Iterator[Packet], source: StreamSource) -> Iterator[Packet]:
    """Every packet until a read error, which is kept in ``source.error``: the
    slice writes all it can, then reports it (as bulk.trace.iter_packets)."""
    try:
        yield from stream
    except TraceError as exc:
        source.error = exc


def _chain_one(first: Packet, rest: Iterator[Packet]) -> Iterator[Packet]:
    yield first
    yield from rest


def open_source(path: str) -> Source:
    """Open ``path`` as the fastest kind of source its content allows."""
    if path == "-":
        return StreamSource(path)
    try:
        with open(path, "rb") as f:
            head = f.read(FILE_HEADER_LEN + RECORD_HEADER_LEN)
    except OSError as exc:
        from bulk.trace.stream import open_error  # noqa: PLC0415 - error path only

        raise open_error(path, exc) from None
    if parse_pcap_header(head) is not None:
        return SeekablePcap(FileBytes(path), "pcap")
    from bulk.trace.magic import compression_of  # noqa: PLC0415 - not a plain pcap's path

    compression = compression_of(head)
    if compression is not None:
        from bulk.trace.seekable import SeekableTrace  # noqa: PLC0415

        try:
            st = SeekableTrace.open(path)
        except TraceError:
            pass  # no bulk frame index: try the zstd frames, else stream it
        else:
            try:
                return IndexedSource(st)
            except BaseException:
                st.close()
                raise
    if compression == "zstd":
        from bulk.slicing.zstdframes import ZstdFrames  # noqa: PLC0415

        frames = ZstdFrames.open(path)
        if frames is not None:
            if parse_pcap_header(frames.read(0, FILE_HEADER_LEN)) is not None:
                return SeekablePcap(frames, "pcap+zstd")
            frames.close()
    return StreamSource(path)


def time_bounds(source: Source, exact: bool = False) -> tuple[int | None, int | None]:
    """(first, last) packet times; ``exact`` reads a stream whole for its last time."""
    if exact and isinstance(source, StreamSource) and source.last_ns is None:
        source.read_last()
    return source.first_ns, source.last_ns


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


__all__ = [
    "NS",
    "RawRecord",
    "SeekablePcap",
    "Source",
    "StreamSource",
    "Window",
    "open_source",
    "time_bounds",
]
