"""TCP reassembly: one :class:`TcpConn` per connection, one :class:`TcpStream` per direction.

Each direction's bytes are delivered in sequence order, exactly once, to a
sink (the flow table, which hands them to the analyzers).

Sequence numbers are mapped to unbounded stream offsets (offset 0 is the
first data byte after the SYN) by the signed 32-bit distance to the next
expected byte, so 32-bit wraparound needs no special case and streams may be
longer than 4 GiB.

Policies (documented for operators in docs/ARCHITECTURE.md):

* Overlaps and retransmissions: **first copy wins**. Bytes already delivered
  or already buffered are never replaced; a retransmission only fills what
  is still missing. Dropped duplicate bytes are counted in ``dup_bytes``.
* Out of order: later segments wait in a per-direction buffer bounded by
  ``max_pending_bytes`` and ``max_pending_segments`` (and the table-wide
  ``budget``). When a bound is hit, the hole before the first buffered
  segment is declared a gap and delivery resumes there.
* Snaplen: payload bytes that were on the wire but not captured are a gap,
  never data.
* Gaps: consecutive missing ranges are merged and delivered as one
  ``gap(nbytes)`` just before the next data, or when the stream ends. At the
  end, bytes up to the FIN (or, without a FIN, up to the highest
  acknowledgement the peer sent) that were never seen are a final gap.
* Start: a SYN gives the initial sequence number of its direction, a SYN-ACK
  gives both. Without a SYN (midstream), segments are held until the
  connection has carried ``hold_packets`` packets (or ``hold_bytes`` are
  held, or the SYN/SYN-ACK turns up), then the lowest held sequence number
  becomes the start: this survives handshakes and data stored out of order
  in the capture. Bytes before the start are dropped (``before_start``).
* FIN closes a direction once every byte before it was delivered; RST closes
  the connection. Data arriving after either is still delivered (in-flight
  segments).
"""

from __future__ import annotations

import bisect
from operator import itemgetter
from typing import Protocol

from bulk.decode import ACK, FIN, RST, SYN

M32 = 0xFFFFFFFF
_HALF = 0x80000000
_FULL = 0x100000000
_TAIL_GAP_MAX = 1 << 30  # larger "gaps" inferred from ACKs are treated as nonsense

_key0 = itemgetter(0)


class StreamSink(Protocol):
    """Receives the reassembled bytes of a connection (the flow table)."""

    def stream_data(self, conn: TcpConn, stream: TcpStream, data: bytes, ts_ns: int) -> None: ...

    def stream_gap(self, conn: TcpConn, stream: TcpStream, nbytes: int, ts_ns: int) -> None: ...


class ReassemblyLimits:
    """Bounds shared by every connection of one table (mutable budget inside)."""

    __slots__ = (
        "budget_left",
        "hold_bytes",
        "hold_packets",
        "max_pending_bytes",
        "max_pending_segments",
    )

    def __init__(
        self,
        max_pending_bytes: int = 1 << 20,
        max_pending_segments: int = 2048,
        budget_bytes: int = 256 << 20,
        hold_packets: int = 8,
        hold_bytes: int = 64 << 10,
    ) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.max_pending_segments = max_pending_segments
        self.budget_left = budget_bytes
        self.hold_packets = hold_packets
        self.hold_bytes = hold_bytes


class TcpStream:
    """The reassembly state of one direction."""

    __slots__ = (
        "ack_seq",
        "base",
        "before_start",
        "closed",
        "delivered",
        "dup_bytes",
        "fin_off",
        "flags",
        "gap_bytes",
        "gap_run",
        "gaps",
        "held",
        "held_bytes",
        "isn",
        "midstream",
        "nxt",
        "outq",
        "outq_ts",
        "pending",
        "pending_bytes",
        "started",
    )

    def __init__(self) -> None:
        self.started = False  # base known, bytes are being delivered
        self.isn: int | None = None  # initial sequence number when SYN/SYN-ACK told us
        self.base = 0  # 32-bit sequence number of stream offset 0
        self.nxt = 0  # offset of the next byte to deliver
        self.pending: list[tuple[int, int, bytes | None]] = []  # (off, end, data|None=gap)
        self.pending_bytes = 0
        self.held: list[tuple[int, bytes, int, int, int]] = []  # before start: seq,data,miss,fin,ts
        self.held_bytes = 0
        self.fin_off: int | None = None
        self.closed = False  # FIN reached (every byte before it delivered)
        self.midstream = False  # start inferred, the SYN was never seen
        self.flags = 0  # OR of all TCP flags sent in this direction
        self.ack_seq = -1  # highest acknowledgement the PEER sent for this stream
        self.delivered = 0  # data bytes delivered
        self.gaps = 0  # gap deliveries (merged holes)
        self.gap_bytes = 0
        self.gap_run = 0  # missing bytes not yet reported
        self.dup_bytes = 0  # retransmitted / overlapping bytes dropped
        self.before_start = 0  # bytes dropped because they precede the start
        self.outq: list[bytes] | None = None  # fast-path bytes counted, not yet delivered
        self.outq_ts = 0

    def seq_offset(self, seq: int) -> int:
        """Stream offset of sequence number ``seq`` (nearest to the next byte)."""
        delta = (seq - self.base - self.nxt) & M32
        if delta >= _HALF:
            delta -= _FULL
        return self.nxt + delta


class TcpConn:
    """Both directions of one TCP connection plus its close state.

    ``streams[d]`` is the stream of direction ``d`` (0 = originator to
    responder). The table swaps the list when roles change.
    """

    __slots__ = ("collect", "flow", "limits", "npkts", "rst", "sink", "streams")

    def __init__(self, flow: object, sink: StreamSink, limits: ReassemblyLimits) -> None:
        self.flow = flow  # the owning bulk.flow.table.Flow (opaque here)
        self.sink = sink
        self.limits = limits
        self.streams = [TcpStream(), TcpStream()]
        self.collect = True  # False: track flags only, drop payload (no analyzer wants bytes)
        self.npkts = 0
        self.rst = False

    # ---- state queries ---------------------------------------------------
    @property
    def finished(self) -> bool:
        """RST seen, or both directions closed by FIN."""
        s0, s1 = self.streams
        return self.rst or (s0.closed and s1.closed)

    @property
    def any_fin_or_rst(self) -> bool:
        s0, s1 = self.streams
        return self.rst or (s0.fin_off is not None) or (s1.fin_off is not None)

    def swap(self) -> None:
        self.streams.reverse()

    # ---- per packet ------------------------------------------------------
    def segment(  # noqa: PLR0917 - the per-packet hot path takes plain positionals
        self, d: int, flags: int, seq: int, ack: int, payload: bytes, missing: int, ts: int
    ) -> None:
        """Process one TCP segment sent in direction ``d``."""
        streams = self.streams
        s = streams[d]
        self.npkts += 1
        s.flags |= flags
        if flags & ACK:
            p = streams[d ^ 1]
            pa = p.ack_seq
            if pa < 0 or 0 < ((ack - pa) & M32) < _HALF:
                p.ack_seq = ack
        if flags & SYN:
            if s.isn is None and not s.started:
                s.isn = seq
                s.base = (seq + 1) & M32
                self._start(s, False)
            if flags & ACK:
                p = streams[d ^ 1]
                if p.isn is None and not p.started:
                    p.isn = (ack - 1) & M32
                    p.base = ack
                    self._start(p, False)
            seq = (seq + 1) & M32
        if flags & RST:
            self.rst = True
        if not self.collect:
            if flags & FIN and s.fin_off is None:
                s.fin_off = 0
                s.closed = True
            return
        if not s.started:
            if payload or missing or flags & FIN:
                s.held.append((seq, payload, missing, flags & FIN, ts))
                s.held_bytes += len(payload)
                if s.held_bytes >= self.limits.hold_bytes:
                    self._start(s, True)
            if self.npkts >= self.limits.hold_packets:
                self._release_held()
            return
        if payload or missing:
            self._data(s, seq, payload, missing, ts)
            if s.fin_off is not None and s.nxt >= s.fin_off and not s.pending:
                s.closed = True
        if flags & FIN:
            self._fin(s, seq + len(payload) + missing)
        if self.npkts == self.limits.hold_packets:
            self._release_held()

    def _release_held(self) -> None:
        for s in self.streams:
            if not s.started and s.held:
                self._start(s, True)

    def _start(self, s: TcpStream, midstream: bool) -> None:
        """Begin delivery in stream ``s``; replay what was held."""
        held = s.held
        if midstream:
            s.midstream = True
            if held:
                first = held[0][0]
                low = 0
                for h in held:
                    delta = (h[0] - first) & M32
                    if delta >= _HALF:
                        delta -= _FULL
                    low = min(low, delta)
                s.base = (first + low) & M32
        s.started = True
        s.nxt = 0
        if held:
            s.held = []
            s.held_bytes = 0
            for seq, payload, missing, fin, ts in held:
                if payload or missing:
                    self._data(s, seq, payload, missing, ts)
                if fin:
                    self._fin(s, seq + len(payload) + missing)
            if s.fin_off is not None and s.nxt >= s.fin_off and not s.pending:
                s.closed = True

    def _fin(self, s: TcpStream, seq_end: int) -> None:
        if s.fin_off is None:
            s.fin_off = s.seq_offset(seq_end & M32)
        if s.nxt >= s.fin_off and not s.pending:
            s.closed = True

    def _data(self, s: TcpStream, seq: int, payload: bytes, missing: int, ts: int) -> None:
        if not self.collect:
            return
        nxt = s.nxt
        delta = (seq - s.base - nxt) & M32
        if delta >= _HALF:
            delta -= _FULL
        dlen = len(payload)
        if delta == 0 and not s.pending:  # in order: the common case
            if dlen:
                if s.gap_run:
                    self._flush_gap(s, ts)
                s.nxt = nxt + dlen
                s.delivered += dlen
                self.sink.stream_data(self, s, payload, ts)
            if missing:
                s.gap_run += missing
                s.nxt += missing
            return
        off = nxt + delta
        end = off + dlen + missing
        if end <= nxt:  # entirely old: retransmission (or before the start)
            self._old(s, off, end)
            return
        if off < nxt:  # overlaps delivered bytes: keep only the new tail
            cut = nxt - off
            self._old(s, off, nxt)
            if cut >= dlen:
                missing -= cut - dlen
                payload = b""
                dlen = 0
            else:
                payload = payload[cut:]
                dlen -= cut
            off = nxt
            if not s.pending:
                if dlen:
                    if s.gap_run:
                        self._flush_gap(s, ts)
                    s.nxt = nxt + dlen
                    s.delivered += dlen
                    self.sink.stream_data(self, s, payload, ts)
                if missing:
                    s.gap_run += missing
                    s.nxt += missing
                return
        if dlen:
            self._insert(s, off, off + dlen, payload)
        if missing:
            self._insert(s, off + dlen, end, None)
        if s.pending and s.pending[0][0] <= s.nxt:
            self._drain(s, ts)
        self._enforce_limits(s, ts)

    @staticmethod
    def _old(s: TcpStream, off: int, end: int) -> None:
        """Count bytes [off, end) that were already delivered or precede the start."""
        if off < 0:
            before = min(end, 0) - off
            s.before_start += before
            s.dup_bytes += end - off - before
        else:
            s.dup_bytes += end - off

    def _insert(self, s: TcpStream, a: int, b: int, data: bytes | None) -> None:
        """Add [a, b) to the pending list, keeping bytes already there (first wins)."""
        pending = s.pending
        i = bisect.bisect_right(pending, a, key=_key0) - 1
        pos = a
        if i >= 0 and pending[i][1] > pos:
            pos = pending[i][1]
        i += 1
        n = len(pending)
        pieces: list[tuple[int, int, bytes | None]] = []
        while pos < b:
            if i < n and pending[i][0] < b:
                ns = pending[i][0]
                if ns > pos:
                    pieces.append((pos, ns, None if data is None else data[pos - a : ns - a]))
                pos = max(pos, pending[i][1])
                i += 1
            else:
                pieces.append((pos, b, None if data is None else data[pos - a : b - a]))
                pos = b
        kept = 0
        for piece in pieces:
            bisect.insort(pending, piece, key=_key0)
            if piece[2] is not None:
                kept += piece[1] - piece[0]
        if data is not None:
            s.dup_bytes += (b - a) - kept
            s.pending_bytes += kept
            self.limits.budget_left -= kept

    def _drain(self, s: TcpStream, ts: int) -> None:
        """Deliver buffered segments that became contiguous."""
        pending = s.pending
        limits = self.limits
        while pending and pending[0][0] <= s.nxt and self.collect:
            off, end, data = pending.pop(0)
            if off < s.nxt:  # only after a forced skip landed inside (defensive)
                if end <= s.nxt:
                    continue
                if data is not None:
                    s.pending_bytes -= len(data)
                    limits.budget_left += len(data)
                    data = data[s.nxt - off :]
                    s.pending_bytes += len(data)
                    limits.budget_left -= len(data)
                off = s.nxt
            if data is None:
                s.gap_run += end - off
            else:
                s.pending_bytes -= len(data)
                limits.budget_left += len(data)
                if s.gap_run:
                    self._flush_gap(s, ts)
                s.delivered += len(data)
                self.sink.stream_data(self, s, data, ts)
            s.nxt = end
        if s.fin_off is not None and s.nxt >= s.fin_off and not pending:
            s.closed = True

    def _enforce_limits(self, s: TcpStream, ts: int) -> None:
        limits = self.limits
        while (
            self.collect
            and s.pending
            and (
                s.pending_bytes > limits.max_pending_bytes
                or len(s.pending) > limits.max_pending_segments
                or limits.budget_left < 0
            )
        ):
            first = s.pending[0][0]
            s.gap_run += first - s.nxt
            s.nxt = first
            self._drain(s, ts)

    def _flush_gap(self, s: TcpStream, ts: int) -> None:
        n = s.gap_run
        s.gap_run = 0
        s.gaps += 1
        s.gap_bytes += n
        self.sink.stream_gap(self, s, n, ts)

    # ---- end -------------------------------------------------------------
    def stop_collecting(self) -> None:
        """Drop buffered bytes and stop reassembling (no analyzer wants them)."""
        self.collect = False
        for s in self.streams:
            if s.pending or s.pending_bytes:  # (no new empty lists per connection)
                self.limits.budget_left += s.pending_bytes
                s.pending = []
                s.pending_bytes = 0
            if s.held or s.held_bytes:
                s.held = []
                s.held_bytes = 0

    def finish(self, ts: int) -> None:
        """The connection ends: deliver what is buffered, report the holes."""
        if not self.collect:
            return
        for s in list(self.streams):
            if not s.started:
                if not s.held:
                    continue
                self._start(s, True)
            while s.pending and self.collect:
                first = s.pending[0][0]
                if first > s.nxt:
                    s.gap_run += first - s.nxt
                    s.nxt = first
                self._drain(s, ts)
            if s.fin_off is not None:
                tail = s.fin_off - s.nxt
            elif s.ack_seq >= 0 and not self.rst:
                tail = s.seq_offset(s.ack_seq) - s.nxt
            else:
                tail = 0
            if 0 < tail < _TAIL_GAP_MAX:
                s.gap_run += tail
                s.nxt += tail
            if s.gap_run:
                self._flush_gap(s, ts)
            if s.fin_off is not None and s.nxt >= s.fin_off:
                s.closed = True
