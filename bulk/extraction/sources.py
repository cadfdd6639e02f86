"""Matching packets of one trace, filtered by libpcap in C.

Python only ever sees packets that passed the BPF program. Three ways in,
chosen per trace (measured in docs/BENCHMARKS.md, "extract"):

``direct``
    An uncompressed pcap or pcapng with microsecond resolution:
    ``pcapy.open_offline(path)`` and ``setfilter``, exactly what tcpdump does.
``stream``
    A gzip- or zstd-compressed pcap, or a nanosecond pcap: a forked child
    writes the decompressed bytes into a pipe that libpcap reads
    (``open_offline('/dev/fd/N')``), so decompression runs on the other core.
    A nanosecond pcap gets the microsecond magic number on the way, so libpcap
    hands over the nanosecond fraction untouched (BPF never looks at times).
``packets``
    Anything else the trace layer reads (pcapng with nanosecond timestamps,
    standard input): the child re-writes the packets as pcap records into the
    pipe, the same way.

The child reports a read error (a cut or corrupt compressed stream) through a
second pipe; it is raised after every packet before it was delivered, as the
trace layer does. libpcap's own errors become TruncatedTrace ("truncated
dump file") or TraceError.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pcapy

from bulk.errors import FilterError, TraceError, TruncatedTrace
from bulk.extraction.plan import Input, adjust_snaplen, follow
from bulk.slicing.pcapfile import PCAP_MAGIC_NS, PCAP_MAGIC_US
from bulk.timespec import TimeWindow

if TYPE_CHECKING:
    from bulk.trace import Packet

# The trace layer (bulk.trace) is imported only by the paths that need it
# (compressed input, pcapng, stdin): the direct path starts faster without it.

CHUNK = 1 << 20
NS = 1_000_000_000

# A matching packet: (time in ns for ordering, then the record as written: seconds,
# fraction in the output's resolution, wire length, captured bytes). Seconds and
# fraction are passed through as read (tcpdump copies even a fraction of a
# damaged record that is out of range).
Match = tuple[int, int, int, int, bytes]
U32 = 0xFFFFFFFF


class Counters:
    """What reading did, shared with the progress display and the report."""

    def __init__(self) -> None:
        self.files_done = 0
        self.bytes_done = 0
        self.packets = 0


def method_for(inp: Input) -> str:
    if inp.pending is not None:
        return "packets"
    if inp.compression is None and not inp.nanosecond:
        return "direct"
    if inp.format == "pcap":
        return "stream"
    return "packets"


def pcap_error(path: str, exc: Exception | str) -> TraceError:
    """libpcap's error message (a PcapError) as the trace's TraceError."""
    msg = str(exc)
    if "truncated" in msg:
        return TruncatedTrace(path, None, msg)
    return TraceError(path, None, msg)


def set_filter(handle: Any, expression: str) -> None:
    if not expression:
        return
    try:
        handle.setfilter(expression)
    except pcapy.PcapError as exc:
        raise FilterError(f"bad filter {expression!r}: {exc}") from None


def check_filter(expression: str, linktype: int) -> None:
    """Compile ``expression`` for a link type, or raise FilterError with libpcap's
    message, before anything is written (as bulk.trace.compile_bpf, whose module
    is not imported on the direct path)."""
    dlt = 12 if linktype == 101 else linktype  # LINKTYPE_RAW is DLT_RAW for libpcap
    try:
        pcapy.compile(dlt, 262144, expression, 1, 0xFFFFFFFF)
    except pcapy.PcapError as exc:
        raise FilterError(f"bad filter {expression!r}: {exc}") from None


# -- the feeding child ----------------------------------------------------------------------


class Feeder:
    """A forked child writing pcap bytes into a pipe; ``fd`` is the read end."""

    def __init__(self, write: Callable[[int], None]) -> None:
        rfd, wfd = os.pipe()
        erfd, ewfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child (covered by integration tests)
            status = 0
            try:
                os.close(rfd)
                os.close(erfd)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                write(wfd)
            except BrokenPipeError:
                pass
            except TraceError as exc:
                status = 1
                doc = {
                    "truncated": isinstance(exc, TruncatedTrace),
                    "path": exc.path,
                    "offset": exc.offset,
                    "reason": exc.reason,
                }
                os.write(ewfd, json.dumps(doc).encode())
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
                status = 2
                doc = {"truncated": False, "path": "", "offset": None, "reason": repr(exc)}
                os.write(ewfd, json.dumps(doc).encode())
            finally:
                os._exit(status)
        os.close(wfd)
        os.close(ewfd)
        self.fd = rfd
        self.pid = pid
        self._errfd = erfd
        self._done = False

    def finish(self) -> TraceError | None:
        """Wait for the child; the error it reported, if any."""
        if self._done:
            return None
        self._done = True
        _pid, status = os.waitpid(self.pid, 0)
        try:
            raw = b""
            while chunk := os.read(self._errfd, 65536):
                raw += chunk
        finally:
            os.close(self._errfd)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return None
        if not raw:
            return TraceError("", None, f"reader process failed (status {status})")
        doc = json.loads(raw)
        cls = TruncatedTrace if doc["truncated"] else TraceError
        return cls(doc["path"], doc["offset"], doc["reason"])

    def kill(self) -> None:
        if self._done:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.finish()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _patch_magic(head: bytes, nanosecond: bool) -> bytes:
    if not nanosecond or len(head) < 4:
        return head
    order = "little" if int.from_bytes(head[:4], "little") == PCAP_MAGIC_NS else "big"
    return PCAP_MAGIC_US.to_bytes(4, order) + head[4:]  # type: ignore[arg-type]


def _stream_writer(path: str, compressed: bool, nanosecond: bool) -> Callable[[int], None]:
    """The (decompressed) bytes of a pcap; a nanosecond file gets the microsecond magic."""

    def write(fd: int) -> None:
        if not compressed:
            src = os.open(path, os.O_RDONLY)
            try:
                head = os.pread(src, 24, 0)
                _write_all(fd, _patch_magic(head, nanosecond))
                os.lseek(src, len(head), os.SEEK_SET)
                while os.splice(src, fd, CHUNK):
                    pass
            finally:
                os.close(src)
            return
        from bulk.trace.stream import TraceStream  # noqa: PLC0415

        with TraceStream(path) as stream:
            read = stream.file.read
            _write_all(fd, _patch_magic(read(24), nanosecond))
            while chunk := read(CHUNK):
                _write_all(fd, chunk)

    return write


def _packet_writer(inp: Input) -> Callable[[int], None]:
    """The packets of a trace re-written as pcap records (times at full resolution).

    The header carries the microsecond magic whatever the resolution, so that
    libpcap passes a nanosecond fraction through unchanged.
    """

    from bulk.trace import open_trace, pcap_header, record_header  # noqa: PLC0415

    def write(fd: int) -> None:
        nano = inp.nanosecond
        with os.fdopen(fd, "wb", buffering=CHUNK) as out:
            out.write(pcap_header(inp.linktype, adjust_snaplen(inp.snaplen), nanosecond=False))
            w = out.write
            if inp.pending is not None:  # standard input, already opened
                packets: Iterator[Packet] = inp.pending
                for pkt in packets:
                    w(record_header(pkt.ts_ns, len(pkt.data), pkt.wirelen, nano))
                    w(pkt.data)
                return
            with open_trace(inp.path) as reader:
                for pkt in reader:
                    w(record_header(pkt.ts_ns, len(pkt.data), pkt.wirelen, nano))
                    w(pkt.data)

    return write


# -- matching packets -----------------------------------------------------------------------


def _open(inp: Input, method: str) -> tuple[Any, Feeder | None, int]:
    """A libpcap handle for the input, its feeder if any, and the fraction multiplier."""
    if method == "direct":
        try:
            return pcapy.open_offline(inp.path), None, 1000
        except pcapy.PcapError as exc:
            raise pcap_error(inp.path, exc) from None
    if method == "stream":
        feeder = Feeder(_stream_writer(inp.path, inp.compression is not None, inp.nanosecond))
    else:
        feeder = Feeder(_packet_writer(inp))
    try:
        handle = pcapy.open_offline(f"/dev/fd/{feeder.fd}")
    except pcapy.PcapError as exc:
        err = feeder.finish()
        os.close(feeder.fd)
        raise (err or pcap_error(inp.path, exc)) from None
    return handle, feeder, 1 if inp.nanosecond else 1000


def _open_following(inp: Input) -> tuple[Input, tuple[Any, Feeder | None, int]]:
    """``_open`` the trace, or the one it became: an archive trace may be renamed or
    deleted between the check and the open (:func:`follow` raises Vanished)."""
    for _ in range(3):
        inp = follow(inp)
        try:
            return inp, _open(inp, method_for(inp))
        except TraceError:
            if inp.path == "-" or os.path.exists(inp.path):
                raise
    inp = follow(inp)
    return inp, _open(inp, method_for(inp))


def matches(
    inp: Input,
    expression: str,
    window: TimeWindow,
    counters: Counters | None = None,
    out_nano: bool = False,
) -> Iterator[Match]:
    """Matching packets of one trace, in file order, within the window (inclusive)."""
    inp, (handle, feeder, mult) = _open_following(inp)
    scale = 1000 if out_nano and not inp.nanosecond else 1
    error: TraceError | None = None
    at_end = False
    start, end = window.start_ns, window.end_ns
    stop_early = inp.time_ordered and end is not None
    try:
        set_filter(handle, expression)
        nxt = handle.next
        while True:
            try:
                hdr, data = nxt()
            except pcapy.PcapError as exc:
                error = pcap_error(inp.path, exc)
                at_end = error.exit_status == TruncatedTrace.exit_status
                break
            if hdr is None:
                at_end = True
                break
            sec, frac = hdr.getts()
            sec &= U32
            frac &= U32  # libpcap 1.9 keeps the fraction as a signed 32-bit value
            ts = sec * NS + frac * mult
            if start is not None and ts < start:
                continue
            if end is not None and ts > end:
                if stop_early:
                    break
                continue
            yield ts, sec, (frac * scale) & U32, hdr.getlen(), data
    finally:
        handle.close()
        if feeder is not None:
            os.close(feeder.fd)
            if at_end:
                # The child wrote everything (or met the damage libpcap saw): its
                # own report, e.g. a cut zstd stream, explains the end best.
                error = feeder.finish() or error
            else:
                feeder.kill()  # stopped early, or libpcap gave up on bad data
        if counters is not None:
            counters.files_done += 1
            counters.bytes_done += inp.size
    if error is not None:
        if not error.path:
            error = type(error)(inp.path, error.offset, error.reason)
        raise error


def open_direct(inp: Input, expression: str) -> Any:
    """A filtered libpcap handle on an uncompressed microsecond trace (the fast path)."""
    handle, _feeder, _mult = _open(inp, "direct")
    try:
        set_filter(handle, expression)
    except BaseException:
        handle.close()
        raise
    return handle
