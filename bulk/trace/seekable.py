"""Seekable compressed traces: independent frames on packet boundaries, with an index.

A trace compressed by ``bulk compress`` is a sequence of independently
decodable frames, each holding whole packet records (the first also holds the
file header), followed by an index. Standard tools read it as one stream
(``zstdcat f.pcap.zst | tcpdump -r -``, ``zcat f.pcap.gz``, Wireshark);
:class:`SeekableTrace` reads the index and decompresses only the frames asked
for, which is how slicing and extraction seek inside compressed traces.

zstd files use the zstd seekable format (facebook/zstd
``contrib/seekable_format``): a final skippable frame (magic 0x184D2A5E) holds
the seek table (compressed and decompressed size and XXH64-32 checksum of every
frame) and ends with the magic 0x8F92EAB1. Before it, bulk's own skippable frame
(magic 0x184D2A5B, listed in the seek table with decompressed size 0) holds the
packet index below.

gzip files are multi-member gzip, one member per frame; the last member is
empty and carries the packet index in its FCOMMENT field (base64), ending in
``<member length, 10 digits> BULKGZI1`` so a reader finds it from the end.

The packet index (little endian)::

    "BULKIDX1"  header_len:u32  flags:u32  kind:u8  endian:u8  pad:u16
    snaplen:u32  size:u64  packets:u64  frames:u32
    per frame:  comp_size:u64  decomp_size:u64  packets:u32
                first_ts last_ts min_ts max_ts: i64 ns (INT64_MIN: no packet)

Flag 1 means nanosecond pcap, flag 2 means the trace had a damaged or
truncated tail (kept byte for byte in the last frame(s)). Integrity is the
formats' own: every zstd frame carries its XXH64 checksum (also in the seek
table), every gzip member its CRC-32, and decoding checks them.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, cast

from bulk import native
from bulk.errors import TraceError
from bulk.trace.framing import FrameStats, Layout
from bulk.trace.packet import Packet
from bulk.trace.reader import open_trace
from bulk.trace.zstdframe import FrameCompressor, FrameDecompressor, new_buffer

if TYPE_CHECKING:
    # Imported where used: concurrent.futures loads logging (~5 ms), which a slice
    # of a compressed trace does not need.
    from concurrent.futures import Future

SKIPPABLE_SEEK_TABLE = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
SKIPPABLE_BULK_INDEX = 0x184D2A5B
INDEX_MAGIC = b"BULKIDX1"
GZIP_INDEX_TAG = b" BULKGZI1"
GZIP_INDEX_PREFIX = b"bulk-frame-index "
# Largest decompressed frame the seekable format allows (contrib/seekable_format).
MAX_FRAME_DECOMPRESSED = 0x40000000
# XXH64 of no bytes, low 32 bits: the seek-table checksum of an empty frame.
EMPTY_XXH32 = 0x51D8E999
# Most compressed bytes SeekableTrace.frames_reused maps at once (else it reads).
MAP_MAX = 1 << 30
FLAG_NANOSECOND = 1
FLAG_DAMAGED = 2
NO_TS = -(2**63)

_INDEX_HEAD = struct.Struct("<8sIIBBHIQQI")
_INDEX_FRAME = struct.Struct("<QQIqqqq")
_SEEK_ENTRY = struct.Struct("<III")
_FOOTER = struct.Struct("<IBI")
_GZIP_EMPTY_TAIL = b"\x03\x00" + bytes(8)  # empty deflate block, CRC32 0, ISIZE 0


class Frame(NamedTuple):
    """One frame: where it is compressed and decompressed, and what it holds."""

    comp_offset: int
    comp_size: int
    decomp_offset: int
    decomp_size: int
    first_ts: int | None
    last_ts: int | None
    packets: int
    min_ts: int | None
    max_ts: int | None


class FrameIndex(NamedTuple):
    """Everything the packet index says about a compressed trace."""

    layout: Layout
    frames: tuple[Frame, ...]
    size: int
    packets: int
    damaged: bool

    def encode(self) -> bytes:
        lay = self.layout
        flags = (FLAG_NANOSECOND if lay.nanosecond else 0) | (FLAG_DAMAGED if self.damaged else 0)
        parts = [
            _INDEX_HEAD.pack(
                INDEX_MAGIC,
                lay.header_len,
                flags,
                0 if lay.kind == "pcap" else 1,
                0 if lay.endian == "<" else 1,
                0,
                lay.snaplen,
                self.size,
                self.packets,
                len(self.frames),
            )
        ]
        for f in self.frames:
            parts.append(
                _INDEX_FRAME.pack(
                    f.comp_size,
                    f.decomp_size,
                    f.packets,
                    _ts_out(f.first_ts),
                    _ts_out(f.last_ts),
                    _ts_out(f.min_ts),
                    _ts_out(f.max_ts),
                )
            )
        return b"".join(parts)

    @staticmethod
    def decode(payload: bytes, path: str = "") -> FrameIndex:
        if len(payload) < _INDEX_HEAD.size or payload[:8] != INDEX_MAGIC:
            raise TraceError(path, None, "frame index: bad magic")
        (_m, header_len, flags, kind, endian, _pad, snaplen, size, packets, nframes) = (
            _INDEX_HEAD.unpack_from(payload)
        )
        if len(payload) != _INDEX_HEAD.size + nframes * _INDEX_FRAME.size:
            raise TraceError(path, None, f"frame index: wrong length for {nframes} frames")
        layout = Layout(
            "pcap" if kind == 0 else "pcapng",
            header_len,
            "<" if endian == 0 else ">",
            bool(flags & FLAG_NANOSECOND),
            snaplen,
        )
        frames: list[Frame] = []
        comp = decomp = 0
        for i in range(nframes):
            csize, dsize, n, first, last, lo, hi = _INDEX_FRAME.unpack_from(
                payload, _INDEX_HEAD.size + i * _INDEX_FRAME.size
            )
            frames.append(
                Frame(
                    comp,
                    csize,
                    decomp,
                    dsize,
                    _ts_in(first),
                    _ts_in(last),
                    n,
                    _ts_in(lo),
                    _ts_in(hi),
                )
            )
            comp += csize
            decomp += dsize
        if decomp != size or sum(f.packets for f in frames) != packets:
            raise TraceError(path, None, "frame index: totals disagree with its frames")
        return FrameIndex(layout, tuple(frames), size, packets, bool(flags & FLAG_DAMAGED))


def _ts_out(ts: int | None) -> int:
    return NO_TS if ts is None else ts


def _ts64(ts: int | None) -> int | None:
    """A time the index can hold (64 bits): a damaged trace's times may lie beyond
    year 2262; clamped, a minimum or maximum is still a bound."""
    return None if ts is None else max(NO_TS + 1, min(ts, 2**63 - 1))


def _ts_in(ts: int) -> int | None:
    return None if ts == NO_TS else ts


def decompress_frame(compression: str, comp: bytes | bytearray, size: int) -> bytes:
    """One frame's ``size`` decompressed bytes; ValueError if the frame is corrupt or
    does not hold exactly ``size`` bytes (the decoder checks the frame's own checksum:
    zstd's XXH64, gzip's CRC-32).

    Never more output than ``size``: a corrupt (or hostile) frame header declaring
    gigabytes must not make us allocate them."""
    # Not at the top: bulk compress decompresses with the system libzstd
    # (zstdframe) and needs python-zstandard (~3 ms to import) only without it.
    import zstandard  # noqa: PLC0415

    try:
        if compression == "zstd":
            declared = zstandard.frame_content_size(comp)
            if declared not in (size, -1):
                raise ValueError(f"its header declares {declared} bytes, the index {size}")
            data: bytes = zstandard.ZstdDecompressor().decompress(comp, max_output_size=size)
        else:
            d = zlib.decompressobj(31)
            data = d.decompress(comp, size + 1)
            if len(data) > size or d.unconsumed_tail:
                raise ValueError(f"member holds more than the index's {size} bytes")
            data += d.flush()
            if not d.eof or d.unused_data:
                raise ValueError("member does not end where the index says")
    except (zstandard.ZstdError, zlib.error) as exc:
        raise ValueError(str(exc)) from None
    if len(data) != size:
        raise ValueError(f"holds {len(data)} bytes, the index says {size}")
    return data


# -- writing -----------------------------------------------------------------------------


def _gzip_member(level: int, data: bytes | bytearray) -> bytes:
    co = zlib.compressobj(level, zlib.DEFLATED, 31)
    return co.compress(data) + co.flush()


_Buffer = bytes | bytearray
if TYPE_CHECKING:
    _Pending = tuple[Future[_Buffer], _Buffer, FrameStats]  # compressed, original, stats


class Workers:
    """The threads that compress and check frames: ``threads`` compression workers
    and, with ``verify``, one check thread. A :class:`SeekableWriter` makes its own,
    or several writers share one (``bulk compress`` writes two files at a time:
    with threads of their own, six threads on two cores; shared, on 40 files of
    12.5 MB, 6 alternating runs: CPU median 3.22 -> 2.73 s, wall 1.82 -> 1.46 s).
    ``close()`` waits for them."""

    def __init__(self, threads: int = 2, verify: bool = False) -> None:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - see Future

        self.threads = max(1, threads)
        self.compress = ThreadPoolExecutor(self.threads, thread_name_prefix="bulk-compress")
        # The checks have a thread of their own rather than a place in the workers'
        # queue behind the next frames' compression: each frame is checked right
        # after it is written, while its bytes are still in the CPU's caches, and
        # its buffers are let go sooner. Measured on 500 MB (alternating runs):
        # 0.2-0.25 CPU s less, 28k instead of 32k page faults. One thread keeps up:
        # a check costs a fifth of a frame's compression.
        self.check = ThreadPoolExecutor(1, thread_name_prefix="bulk-check") if verify else None

    def close(self) -> None:
        self.compress.shutdown(wait=True, cancel_futures=True)
        if self.check is not None:
            self.check.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SeekableWriter:
    """Compress frames in parallel (``threads`` workers) and write them in order.

    ``add(data, stats)`` per frame (each on record boundaries), then
    ``finish(layout, damaged)`` writes the index and returns it. The
    caller owns ``out`` (flush, fsync, close).

    With ``verify``, every frame is checked as soon as it is written, by a thread
    of its own while the next frames compress: its compressed bytes are read back
    from ``out`` (a mapping of its file's pages for the system libzstd, ``pread``
    otherwise; from memory if it has no file descriptor),
    decompressed (the decoder checks the frame's own checksum) and compared byte
    for byte with the original bytes still in memory. A difference raises
    :class:`FrameMismatch` from ``add`` or ``finish``.

    ``workers`` shared with other writers replace the writer's own threads
    (``threads`` is then theirs); the caller closes them.
    """

    def __init__(
        self,
        out: BinaryIO,
        fmt: str = "zstd",
        level: int = 3,
        threads: int = 2,
        verify: bool = False,
        *,
        workers: Workers | None = None,
    ) -> None:
        if fmt not in ("zstd", "gzip"):
            raise ValueError(f"unknown format {fmt}")
        self._out = out
        self.fmt = fmt
        self.level = level
        self._zstd = FrameCompressor(level) if fmt == "zstd" else None
        self._unzstd: FrameDecompressor | None = None
        if verify and fmt == "zstd":
            self._unzstd = FrameDecompressor()
            if not self._unzstd.available():
                self._unzstd = None  # python-zstandard's decompress_frame, and ==
        self._own_workers = workers is None
        if workers is None:
            workers = Workers(threads, verify)
        elif verify and workers.check is None:
            raise ValueError("verifying needs workers with a check thread")
        self._workers = workers
        self._pool = workers.compress
        self._check_pool = workers.check if verify else None
        # Frames in flight, compressing and then checking: enough to keep the workers
        # busy, few enough that their buffers (reused through the heap, see
        # codec.tune_malloc) stay few: each new one is some 1,000 page faults.
        self._depth = 2 * workers.threads + 1
        self._pending: deque[_Pending] = deque()
        self._checks: deque[Future[None]] = deque()
        self._fd = -1
        self._base = 0
        if verify:
            try:
                self._fd = out.fileno()
                self._base = out.tell()
            except (AttributeError, OSError, ValueError):
                self._fd = -1  # an in-memory stream: check the bytes written
        self._frames: list[Frame] = []
        self._seek: list[tuple[int, int, int]] = []
        self._comp = 0
        self._decomp = 0
        self.written = 0

    def add(self, data: bytes | bytearray, stats: FrameStats) -> None:
        """Compress ``data`` (one frame; a bytearray must not change afterwards)."""
        if len(data) > MAX_FRAME_DECOMPRESSED:
            raise ValueError("frame larger than the seekable format allows")
        if self._zstd is not None:
            fut = self._pool.submit(self._zstd.compress, data)
        else:
            fut = self._pool.submit(_gzip_member, self.level, data)
        self._pending.append((fut, data, stats))
        while len(self._pending) > self._depth:
            self._drain_one()
        while len(self._checks) > self._depth:
            self._checks.popleft().result()

    def _drain_one(self) -> None:
        fut, data, st = self._pending.popleft()
        comp = fut.result()
        dsize = len(data)
        self._out.write(comp)
        if self._check_pool is not None:
            if self._fd >= 0:
                self._out.flush()
            # Read back from the file, the check needs only the frame's length: the
            # compressed bytes are let go now rather than after the check.
            kept = comp if self._fd < 0 else None
            self._checks.append(
                self._check_pool.submit(
                    self._check, len(self._frames), self._comp, self._decomp, len(comp), kept, data
                )
            )
        self._frames.append(
            Frame(
                self._comp,
                len(comp),
                self._decomp,
                dsize,
                _ts64(st.first_ts),
                _ts64(st.last_ts),
                st.packets,
                _ts64(st.min_ts),
                _ts64(st.max_ts),
            )
        )
        if self.fmt == "zstd":
            self._seek.append((len(comp), dsize, int.from_bytes(comp[-4:], "little")))
        self._comp += len(comp)
        self._decomp += dsize

    def _check(  # noqa: PLR0917 - one frame's coordinates
        self,
        k: int,
        offset: int,
        decomp_offset: int,
        comp_size: int,
        comp: _Buffer | None,
        data: _Buffer,
    ) -> None:
        """Frame ``k`` as written decompresses to exactly ``data`` (see the class text):
        its ``comp_size`` bytes at ``offset`` of the file, or ``comp`` when there is
        no file to read back.

        Equal bytes are equal packets: the packet counts and times of the index
        were taken from these very bytes, so no separate packet walk is needed."""
        try:
            if self._fd >= 0 and self._unzstd is not None:
                equal = self._equal_mapped(self._unzstd, k, self._base + offset, comp_size, data)
            else:
                back = comp
                if back is None:
                    back = os.pread(self._fd, comp_size, self._base + offset)
                    if len(back) != comp_size:
                        raise FrameMismatch(
                            f"frame {k}: {len(back)} of {comp_size} bytes read back"
                        )
                if self._unzstd is not None:
                    equal = self._unzstd.equal(back, data, native_same_bytes())
                else:
                    equal = decompress_frame(self.fmt, back, len(data)) == data
        except ValueError as exc:
            raise FrameMismatch(f"frame {k} does not decompress: {exc}") from None
        if not equal:
            raise FrameMismatch(
                f"frame {k} decompresses to bytes that differ from the original's "
                f"bytes {decomp_offset}..{decomp_offset + len(data)}"
            )
        if self._fd >= 0:
            start_writeback(self._fd, self._base + offset, comp_size)

    def _equal_mapped(
        self, unzstd: FrameDecompressor, k: int, pos: int, n: int, data: bytes | bytearray
    ) -> bool:
        """Frame ``k`` (``n`` bytes at ``pos`` of the file) decompresses to ``data``,
        read back through a mapping of the file's pages rather than a copy (``pread``):
        some 0.07 CPU s less per 500 MB. The file is checked to hold those bytes
        first (it only grows: this writer is its one writer)."""
        have = os.fstat(self._fd).st_size - pos
        if have < n:
            raise FrameMismatch(f"frame {k}: {max(have, 0)} of {n} bytes read back")
        start = pos - pos % mmap.ALLOCATIONGRANULARITY
        # A private mapping is writable (ctypes lends only writable buffers); it is
        # never written, so every page read is the file's.
        error = ""
        with mmap.mmap(self._fd, pos - start + n, offset=start, access=mmap.ACCESS_COPY) as m:
            back = (ctypes.c_char * n).from_buffer(m, pos - start)
            try:
                equal = unzstd.equal(back, data, native_same_bytes())
            except ValueError as exc:
                # Only its text leaves: its traceback would keep ``back`` lent and
                # the mapping could not close.
                equal, error = False, str(exc)
            del back  # the mapping cannot close while lent
        if error:
            raise ValueError(error)
        return equal

    def finish(self, layout: Layout, damaged: bool) -> FrameIndex:
        try:
            while self._pending:
                self._drain_one()
            while self._checks:
                self._checks.popleft().result()
        finally:
            self._shutdown()
        index = FrameIndex(
            layout,
            tuple(self._frames),
            self._decomp,
            sum(f.packets for f in self._frames),
            damaged,
        )
        payload = index.encode()
        if self.fmt == "zstd":
            tail = _zstd_trailer(payload, self._seek)
        else:
            tail = _gzip_index_member(payload)
        self._out.write(tail)
        self.written = self._comp + len(tail)
        return index

    def abort(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        if self._own_workers:
            self._workers.close()
        else:
            # Shared threads: stop this writer's own jobs (after an error; after
            # finish there are none), and wait for those already running, which
            # use its file and compression contexts.
            from concurrent.futures import wait  # noqa: PLC0415 - loaded with Workers

            jobs: list[Future[Any]] = [fut for fut, _data, _st in self._pending]
            jobs += self._checks
            for job in jobs:
                job.cancel()
            wait(jobs)
            self._pending.clear()
            self._checks.clear()
        if self._zstd is not None:
            self._zstd.close()
        if self._unzstd is not None:
            self._unzstd.close()


_SYNC_FILE_RANGE_WRITE = 2


@lru_cache(maxsize=1)
def _sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, size: int) -> None:
    """Ask the kernel to start writing these bytes to disk now (``sync_file_range``,
    asynchronous), so that the caller's final fsync has little left to wait for:
    the disk works while the next frames compress. Errors are not reported here;
    the fsync reports them. No-op where the call does not exist."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, size, _SYNC_FILE_RANGE_WRITE)


def same_bytes(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> bool:
    """``a`` and ``b`` hold the same bytes. The twin of ``bulk._recwalk.same_bytes``
    (which compares without copying and without the GIL)."""
    return len(a) == len(b) and bytes(a) == bytes(b)


_Same = Callable[[memoryview, bytes | bytearray], bool]


def native_same_bytes() -> _Same:
    mod = native.load("recwalk")
    return same_bytes if mod is None else cast(_Same, mod.same_bytes)


class FrameMismatch(ValueError):
    """A frame just written does not read back as the bytes it was made from."""


def _zstd_trailer(payload: bytes, seek: list[tuple[int, int, int]]) -> bytes:
    bulk_frame = struct.pack("<II", SKIPPABLE_BULK_INDEX, len(payload)) + payload
    entries = [*seek, (len(bulk_frame), 0, EMPTY_XXH32)]
    table = b"".join(_SEEK_ENTRY.pack(*e) for e in entries)
    footer = _FOOTER.pack(len(entries), 0x80, SEEKABLE_MAGIC)  # Checksum_Flag set
    body = table + footer
    return bulk_frame + struct.pack("<II", SKIPPABLE_SEEK_TABLE, len(body)) + body


def _gzip_index_member(payload: bytes) -> bytes:
    import base64  # noqa: PLC0415 - gzip traces only (zstd is the default)

    text = GZIP_INDEX_PREFIX + base64.b64encode(payload)
    # header(10) + comment + " NNNNNNNNNN BULKGZI1" + NUL + empty tail
    length = 10 + len(text) + 1 + 10 + len(GZIP_INDEX_TAG) + 1 + len(_GZIP_EMPTY_TAIL)
    header = b"\x1f\x8b\x08\x10" + bytes(4) + b"\x00\xff"  # FCOMMENT, no mtime, OS unknown
    return header + text + b" " + b"%010d" % length + GZIP_INDEX_TAG + b"\x00" + _GZIP_EMPTY_TAIL


# -- reading -----------------------------------------------------------------------------


class SeekableTrace:
    """A compressed trace written by ``bulk compress``, opened through its index.

    ``frames`` lists :class:`Frame` records; ``read_frames(i, j)`` returns the
    decompressed bytes of frames ``i`` to ``j - 1`` (frame 0 starts with the file
    header; :meth:`header` gives it alone, to put before any other frame).
    """

    def __init__(self, path: str, f: BinaryIO, compression: str, index: FrameIndex) -> None:
        self.path = path
        self._f = f
        self.compression = compression
        self.index = index
        self.layout = index.layout
        self.frames = list(index.frames)
        self._header: bytes | None = None

    @classmethod
    def open(cls, path: str) -> SeekableTrace:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise TraceError(path, None, exc.strerror or str(exc)) from None
        try:
            head = f.read(4)
            if head[:2] == b"\x1f\x8b":
                return cls(path, f, "gzip", _read_gzip_index(f, path))
            magic = int.from_bytes(head, "little") if len(head) == 4 else 0
            if head == b"\x28\xb5\x2f\xfd" or 0x184D2A50 <= magic <= 0x184D2A5F:
                return cls(path, f, "zstd", _read_zstd_index(f, path))
            raise TraceError(path, 0, "not a zstd or gzip file")
        except BaseException:
            f.close()
            raise

    @property
    def packets(self) -> int:
        return self.index.packets

    @property
    def size(self) -> int:
        return self.index.size

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SeekableTrace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_compressed(self, i: int, limit: int | None = None) -> bytes:
        """Frame ``i``'s compressed bytes (only the first ``limit`` if given)."""
        fr = self.frames[i]
        n = fr.comp_size if limit is None else min(limit, fr.comp_size)
        self._f.seek(fr.comp_offset)
        data = self._f.read(n)
        if len(data) != n:
            raise TraceError(self.path, fr.comp_offset, f"frame {i} cut short")
        return data

    def read_frame(self, i: int) -> bytes:
        return self.decompress(i, self.read_compressed(i))

    def decompress(self, i: int, comp: bytes) -> bytes:
        """Decompress frame ``i`` from its compressed bytes and check its size
        (the decoder checks the frame's own checksum)."""
        fr = self.frames[i]
        if fr.decomp_size > MAX_FRAME_DECOMPRESSED:
            raise TraceError(
                self.path, fr.comp_offset, f"frame {i}: the index says {fr.decomp_size} bytes"
            )
        try:
            data = decompress_frame(self.compression, comp, fr.decomp_size)
        except ValueError as exc:
            raise TraceError(self.path, fr.comp_offset, f"frame {i} corrupt: {exc}") from None
        return data

    def iter_frames(self, i: int = 0, j: int | None = None, threads: int = 1) -> Iterator[bytes]:
        """Decompressed frames ``i`` .. ``j - 1`` in order (decompressed ahead in threads)."""
        stop = len(self.frames) if j is None else j
        if threads <= 1:
            for k in range(i, stop):
                yield self.read_frame(k)
            return
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - see Future

        with ThreadPoolExecutor(threads, thread_name_prefix="bulk-decompress") as pool:
            ahead: deque[Future[bytes]] = deque()
            k = i
            while k < stop or ahead:
                while k < stop and len(ahead) < 2 * threads:
                    ahead.append(pool.submit(self.decompress, k, self.read_compressed(k)))
                    k += 1
                yield ahead.popleft().result()

    def can_reuse_buffers(self) -> bool:
        """True if :meth:`frames_reused` can decode this trace (zstd, with the
        system libzstd: see :class:`~bulk.trace.zstdframe.FrameDecompressor`)."""
        return self.compression == "zstd" and FrameDecompressor().available()

    def read_compressed_into(self, i: int, buf: bytearray) -> int:
        """Read frame ``i``'s compressed bytes into the start of ``buf``; their length."""
        fr = self.frames[i]
        n = fr.comp_size
        view = memoryview(buf)[:n]
        fd = self._f.fileno()
        got = 0
        while got < n:
            k = os.preadv(fd, [view[got:]], fr.comp_offset + got)
            if k <= 0:
                raise TraceError(self.path, fr.comp_offset, f"frame {i} cut short")
            got += k
        return n

    def decompress_into(
        self,
        i: int,
        unzstd: FrameDecompressor,
        comp: bytearray | mmap.mmap,
        comp_at: int,
        out: bytearray,
    ) -> memoryview:
        """Decompress frame ``i``, whose compressed bytes are at ``comp[comp_at:]``,
        into ``out``; a view of its bytes there."""
        fr = self.frames[i]
        if fr.decomp_size > MAX_FRAME_DECOMPRESSED or fr.decomp_size > len(out):
            raise TraceError(
                self.path, fr.comp_offset, f"frame {i}: the index says {fr.decomp_size} bytes"
            )
        try:
            unzstd.decompress_into(comp, comp_at, fr.comp_size, out, fr.decomp_size)
        except ValueError as exc:
            raise TraceError(self.path, fr.comp_offset, f"frame {i} corrupt: {exc}") from None
        return memoryview(out)[: fr.decomp_size]

    def _map(self, ks: Sequence[int]) -> tuple[mmap.mmap | None, int]:
        """The file's pages holding frames ``ks``, mapped (copy-on-write, never
        written: the page cache's own pages), and the file offset of the mapping's
        start; (None, 0) where the file cannot be mapped, or for more than
        :data:`MAP_MAX` bytes (a private writable mapping is counted as memory
        the process may use: one of many GiB could be refused, or crowd others)."""
        lo = min(self.frames[k].comp_offset for k in ks)
        hi = max(self.frames[k].comp_offset + self.frames[k].comp_size for k in ks)
        base = lo - lo % mmap.ALLOCATIONGRANULARITY
        if hi - base > MAP_MAX:
            return None, 0
        try:
            return mmap.mmap(
                self._f.fileno(), hi - base, offset=base, access=mmap.ACCESS_COPY
            ), base
        except (OSError, ValueError):
            return None, 0

    def frames_reused(
        self, ks: Sequence[int], threads: int | None = None
    ) -> Iterator[tuple[int, memoryview]]:
        """``(k, bytes of frame k)`` for the frames ``ks`` in that order, decompressed
        ahead on ``threads`` threads (default :func:`decode_threads`) into a few
        buffers that are reused: a view is valid only until the caller asks for
        the next one (write it, or copy it). Only when :meth:`can_reuse_buffers`
        is True.

        Each frame read into a new ``bytes`` and decompressed into another is
        fresh memory twice, zeroed by the kernel page by page: a 167 MB window
        of 4 MiB frames took 33,000 page faults that way, 8,700 with the buffers
        reused (of which 2,900 are the interpreter's start). The compressed
        frames are decoded from a mapping of the file where it can be mapped:
        ``pread`` into a buffer copied the 66 MB they are, 10 % of the CPU time
        of their decompression."""
        import queue  # noqa: PLC0415 - loaded with zstdframe anyway
        import threading  # noqa: PLC0415

        if not ks:
            return
        frames = self.frames
        cap = max(frames[k].decomp_size for k in ks)
        comp_cap = max(frames[k].comp_size for k in ks)
        if cap > MAX_FRAME_DECOMPRESSED:
            k = next(k for k in ks if frames[k].decomp_size == cap)
            raise TraceError(
                self.path, frames[k].comp_offset, f"frame {k}: the index says {cap} bytes"
            )
        threads = max(1, min(decode_threads() if threads is None else threads, len(ks)))
        unzstd = FrameDecompressor()
        jobs: queue.SimpleQueue[_Slot | None] = queue.SimpleQueue()
        stop = threading.Event()
        mapped, base = self._map(ks)

        def decode(slot: _Slot, comp: bytearray | None) -> None:
            try:
                if stop.is_set():
                    pass
                elif mapped is not None:
                    at = frames[slot.k].comp_offset - base
                    slot.view = self.decompress_into(slot.k, unzstd, mapped, at, slot.out)
                else:
                    assert comp is not None
                    self.read_compressed_into(slot.k, comp)
                    slot.view = self.decompress_into(slot.k, unzstd, comp, 0, slot.out)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                slot.error = exc
            finally:
                slot.done.set()

        def work() -> None:
            # Without a mapping, a buffer per thread to read frames into.
            comp = new_buffer(comp_cap) if mapped is None else None
            while (slot := jobs.get()) is not None:
                decode(slot, comp)

        # A frame being written and one being decompressed per thread. Not zeroed
        # (bytearray(n) would, on this thread): the pages are touched first by the
        # decompression, on the workers.
        free = [_Slot(new_buffer(cap)) for _ in range(min(threads + 1, len(ks)))]
        pending: deque[_Slot] = deque()
        todo = iter(ks)

        def submit() -> None:
            while free:
                k = next(todo, -1)
                if k < 0:
                    return
                slot = free.pop()
                slot.k, slot.view, slot.error = k, None, None
                slot.done.clear()
                pending.append(slot)
                jobs.put(slot)

        workers = [
            threading.Thread(target=work, name=f"bulk-decompress-{t}", daemon=True)
            for t in range(threads)
        ]
        try:
            submit()
            for w in workers:
                w.start()
            while pending:
                slot = pending.popleft()
                slot.done.wait()
                if slot.error is not None:
                    raise slot.error
                assert slot.view is not None
                yield slot.k, slot.view
                slot.view = None
                free.append(slot)
                submit()
        finally:
            stop.set()
            for _w in workers:
                jobs.put(None)
            for w in workers:
                if w.is_alive():
                    w.join()
            unzstd.close()
            if mapped is not None:
                try:
                    mapped.close()
                except BufferError:  # a view still lent out: unmapped when it goes
                    pass

    def read_frames(self, i: int, j: int) -> bytes:
        """Decompressed bytes of frames ``i`` to ``j - 1`` (Python slice semantics)."""
        return b"".join(self.iter_frames(i, j))

    def header(self) -> bytes:
        """The file header (pcap: 24 bytes; pcapng: the blocks before the first packet)."""
        if self._header is None:
            need = self.layout.header_len
            parts: list[bytes] = []
            got = 0
            k = 0
            while got < need and k < len(self.frames):
                b = self.read_frame(k)
                parts.append(b)
                got += len(b)
                k += 1
            self._header = b"".join(parts)[:need]
        return self._header

    def frames_between(self, start_ns: int | None, end_ns: int | None) -> list[int]:
        """Indices of the frames that may hold packets with ``start_ns <= ts < end_ns``."""
        out: list[int] = []
        for k, fr in enumerate(self.frames):
            if fr.packets == 0 or fr.min_ts is None or fr.max_ts is None:
                continue
            if end_ns is not None and fr.min_ts >= end_ns:
                continue
            if start_ns is not None and fr.max_ts < start_ns:
                continue
            out.append(k)
        return out

    def packets_in(self, i: int, j: int) -> Iterator[Packet]:
        """The packets of frames ``i`` to ``j - 1``, decoded alone (header put before them)."""
        data = self.read_frames(i, j)
        if i > 0:
            data = self.header() + data
        fd = os.memfd_create("bulk-frames")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            with open_trace(f"/proc/self/fd/{fd}") as reader:
                yield from reader
        finally:
            os.close(fd)


def decode_threads() -> int:
    """Threads decompressing for :meth:`SeekableTrace.frames_reused`: one per core
    beside the caller's (which writes what they decode), at most two. On two
    cores, a second one only competed with the writer: 2 GB bench trace,
    alternating runs on a loaded machine, median CPU 184.7 ms with one against
    194.9 ms with two, wall 140 against 146 ms."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(2, cores - 1))


class _Slot:
    """One frame's buffers in :meth:`SeekableTrace.frames_reused`."""

    __slots__ = ("done", "error", "k", "out", "view")

    def __init__(self, out: bytearray) -> None:
        import threading  # noqa: PLC0415

        self.out = out
        self.k = -1
        self.view: memoryview | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


def is_seekable(path: str) -> bool:
    """True if ``path`` is a compressed trace with a bulk frame index."""
    try:
        with SeekableTrace.open(path):
            return True
    except TraceError:
        return False


def _read_at(f: BinaryIO, offset: int, n: int, path: str) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise TraceError(path, offset, "file cut short")
    return data


def _read_zstd_index(f: BinaryIO, path: str) -> FrameIndex:
    end = f.seek(0, os.SEEK_END)
    if end < 9 + 8:
        raise TraceError(path, None, "no frame index (no zstd seek table)")
    nframes, desc, magic = _FOOTER.unpack(_read_at(f, end - 9, 9, path))
    if magic != SEEKABLE_MAGIC:
        raise TraceError(path, None, "no frame index (no zstd seek table)")
    if desc & 0x7C:
        raise TraceError(path, None, "zstd seek table uses reserved descriptor bits")
    esize = 12 if desc & 0x80 else 8
    table_len = 8 + nframes * esize + 9
    if table_len > end:
        raise TraceError(path, None, "zstd seek table larger than the file")
    table = _read_at(f, end - table_len, table_len, path)
    skip_magic, body_len = struct.unpack_from("<II", table)
    if skip_magic != SKIPPABLE_SEEK_TABLE or body_len != table_len - 8:
        raise TraceError(path, None, "zstd seek table frame header is wrong")
    entries = [struct.unpack_from("<II", table, 8 + k * esize) for k in range(nframes)]
    if sum(c for c, _d in entries) != end - table_len:
        raise TraceError(path, None, "zstd seek table does not add up to the file size")
    if not entries or entries[-1][1] != 0:
        raise TraceError(path, None, "no bulk frame index (seek table written by another tool)")
    bulk_len = entries[-1][0]
    bulk = _read_at(f, end - table_len - bulk_len, bulk_len, path)
    bmagic, plen = struct.unpack_from("<II", bulk)
    if bmagic != SKIPPABLE_BULK_INDEX or plen != bulk_len - 8:
        raise TraceError(path, None, "no bulk frame index (seek table written by another tool)")
    index = FrameIndex.decode(bulk[8:], path)
    data_entries = entries[:-1]
    if [(fr.comp_size, fr.decomp_size) for fr in index.frames] != [tuple(e) for e in data_entries]:
        raise TraceError(path, None, "bulk frame index disagrees with the zstd seek table")
    return index


def _read_gzip_index(f: BinaryIO, path: str) -> FrameIndex:
    end = f.seek(0, os.SEEK_END)
    tail_len = 1 + 10 + len(GZIP_INDEX_TAG) + 1 + len(_GZIP_EMPTY_TAIL)
    if end < tail_len + 10:
        raise TraceError(path, None, "no frame index (plain gzip)")
    tail = _read_at(f, end - tail_len, tail_len, path)
    if not tail.endswith(GZIP_INDEX_TAG + b"\x00" + _GZIP_EMPTY_TAIL) or not tail[1:11].isdigit():
        raise TraceError(path, None, "no frame index (plain gzip)")
    length = int(tail[1:11])
    if length > end or length < tail_len + 10 + len(GZIP_INDEX_PREFIX):
        raise TraceError(path, None, "gzip frame index member has a bad length")
    member = _read_at(f, end - length, length, path)
    text = member[10 : length - tail_len]
    if member[:4] != b"\x1f\x8b\x08\x10" or not text.startswith(GZIP_INDEX_PREFIX):
        raise TraceError(path, None, "gzip frame index member is malformed")
    import base64  # noqa: PLC0415 - gzip traces only (zstd is the default)

    try:
        payload = base64.b64decode(text[len(GZIP_INDEX_PREFIX) :], validate=True)
    except ValueError:
        raise TraceError(path, None, "gzip frame index is not valid base64") from None
    index = FrameIndex.decode(payload, path)
    if sum(fr.comp_size for fr in index.frames) != end - length:
        raise TraceError(path, None, "gzip frame index does not add up to the file size")
    return index
