"""The one flow table under every analyzer.

:class:`FlowTable` keeps one :class:`Flow` per bidirectional 5-tuple
(addresses, ports, IP protocol; VLAN tags are not part of the key), decides
originator and responder, reassembles TCP (:mod:`bulk.flow.tcp`) and calls
the registered analyzers (:mod:`bulk.flow.analyzer`).

* Roles: the sender of a SYN (without ACK) is the originator; the sender of a
  SYN-ACK is the responder. Without either, a port < 1024 facing a port >= 1024
  is the responder, then for TCP the lower port; otherwise the sender of the
  first packet is the originator. ``Flow.role`` names the evidence. A SYN or
  SYN-ACK seen later corrects weaker evidence; an analyzer can re-decide from
  payload with :meth:`Flow.swap_roles`.
* Timeouts run on packet time, never the wall clock: a flow without a packet
  for ``idle_timeout_s`` ends (``idle``), one older than ``active_timeout_s``
  ends and restarts (``active``; 0 disables it), a TCP connection closed by
  FIN on both sides or by RST ends ``close_delay_s`` after closing (late ACKs
  and retransmissions still count), at once when a new SYN reuses its 4-tuple
  (``reused``).
* Memory: at most ``max_flows`` flows; the least recently used is ended
  (``evicted``) to make room. Buffered TCP bytes are bounded per direction and
  table-wide (:class:`bulk.flow.tcp.ReassemblyLimits`).
"""

from __future__ import annotations

import contextlib
import struct
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from bulk.decode import (
    ACK,
    FRAG_LATER,
    PROTO_TCP,
    PROTO_UDP,
    SYN,
    Decoded,
    addr_text,
    decode_fields,
)
from bulk.errors import Vanished
from bulk.flow.analyzer import (
    END_ACTIVE,
    END_EOF,
    END_EVICTED,
    END_FIN,
    END_IDLE,
    END_REUSED,
    END_RST,
    Analyzer,
)
from bulk.flow.tcp import M32, ReassemblyLimits, TcpConn, TcpStream
from bulk.slotted import Frozen, Slotted
from bulk.trace.bpf import BpfFilter
from bulk.trace.chunks import PcapRecords, pcap_records
from bulk.trace.packet import LINKTYPE_ETHERNET, Packet
from bulk.trace.source import Opener, iter_packets, open_direct

NS = 1_000_000_000

# An index entry: the flow, the direction of packets with this key, and for TCP
# the connection and the streams of that direction and of the other one.
_Entry = tuple["Flow", int, "TcpConn | None", "TcpStream | None", "TcpStream | None"]

# IPv4 (no options) + TCP header fields, unpacked where they lie: total length,
# fragment word, src, dst, sport, dport, seq, ack, data offset, flags.
_IP4_TCP = struct.Struct("!2xH2xH4x4s4sHHIIBB").unpack_from
# Ethernet type, then the same IPv4+TCP fields plus version/IHL and protocol.
_ETH_IP4_TCP = struct.Struct("!12xHBxH2xHxB2x4s4sHHIIBB").unpack_from
# IPv6 + TCP: payload length, src, dst, sport, dport, seq, ack, data offset, flags.
_IP6_TCP = struct.Struct("!4xH2x16s16sHHIIBB").unpack_from

# Role evidence, weakest first. Analyzers may use their own strings (ranked
# as ROLE_PAYLOAD).
ROLE_FIRST = "first"  # sender of the first packet seen
ROLE_PORT = "port"  # port numbers (well-known / lower port is the responder)
ROLE_PAYLOAD = "payload"  # an analyzer recognised client/server from payload
ROLE_SYNACK = "synack"  # the responder sent a SYN-ACK
ROLE_SYN = "syn"  # the originator sent a SYN
_ROLE_RANK = {ROLE_FIRST: 0, ROLE_PORT: 1, ROLE_PAYLOAD: 2, ROLE_SYNACK: 3, ROLE_SYN: 4}

_UID_SPACE = 62**10
# Odd and not a multiple of 31, so n -> n * _UID_MULT mod 62**10 is a bijection:
# deterministic, unique, and consecutive flows get unrelated-looking uids.
_UID_MULT = 519_285_026_174_517_913
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def make_uid(n: int) -> str:
    """A Zeek-looking, deterministic, unique connection id for counter ``n``."""
    v = (n * _UID_MULT) % _UID_SPACE
    out = []
    for _ in range(10):
        v, r = divmod(v, 62)
        out.append(_B62[r])
    return "C" + "".join(reversed(out))


class FlowConfig(Frozen):
    """Flow table settings (immutable). Times are seconds of packet time.

    (A plain class, not a dataclass: ``dataclasses`` imports ``inspect``,
    about 7 ms of every start-up of the commands that build a flow table.)
    """

    __slots__ = (
        "active_timeout_s",
        "close_delay_s",
        "hold_bytes",
        "hold_packets",
        "idle_timeout_s",
        "max_flows",
        "max_pending_bytes",
        "max_pending_segments",
        "protocols",
        "reassembly_budget_bytes",
        "sweep_interval_s",
    )
    idle_timeout_s: float
    active_timeout_s: float
    close_delay_s: float
    max_flows: int
    protocols: frozenset[int] | None
    sweep_interval_s: float
    max_pending_bytes: int
    max_pending_segments: int
    reassembly_budget_bytes: int
    hold_packets: int
    hold_bytes: int

    def __init__(  # noqa: PLR0917 - the dataclass's signature, kept
        self,
        idle_timeout_s: float = 300.0,
        active_timeout_s: float = 0.0,  # 0: never split a long flow
        close_delay_s: float = 5.0,
        max_flows: int = 65_536,  # about 3 KiB each while open: ~200 MiB at the limit
        protocols: frozenset[int] | None = None,  # IP protocols to track; None: all
        sweep_interval_s: float = 1.0,
        max_pending_bytes: int = 1 << 20,  # out-of-order bytes per direction
        max_pending_segments: int = 2048,
        reassembly_budget_bytes: int = 256 << 20,  # out-of-order bytes, whole table
        hold_packets: int = 8,  # midstream: packets to wait for the lowest sequence number
        hold_bytes: int = 64 << 10,
    ) -> None:
        if idle_timeout_s <= 0:
            raise ValueError("idle timeout must be positive")
        if active_timeout_s < 0 or close_delay_s < 0:
            raise ValueError("timeouts must not be negative")
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        init = object.__setattr__
        init(self, "idle_timeout_s", idle_timeout_s)
        init(self, "active_timeout_s", active_timeout_s)
        init(self, "close_delay_s", close_delay_s)
        init(self, "max_flows", max_flows)
        init(self, "protocols", protocols)
        init(self, "sweep_interval_s", sweep_interval_s)
        init(self, "max_pending_bytes", max_pending_bytes)
        init(self, "max_pending_segments", max_pending_segments)
        init(self, "reassembly_budget_bytes", reassembly_budget_bytes)
        init(self, "hold_packets", hold_packets)
        init(self, "hold_bytes", hold_bytes)


class TableStats(Slotted):
    """Counters of one table run (what was skipped, and why).

    ``undecodable``: not IPv4/IPv6, or cut inside a header;
    ``later_fragments``: IPv4/IPv6 fragments without transport header;
    ``other_protocols``: IP protocols the table was told not to track;
    ``ended``: flows ended, per reason; ``fast_path``: packets handled in
    place by run_records (profiling aid).
    """

    __slots__ = (
        "ended",
        "fast_path",
        "flows",
        "later_fragments",
        "other_protocols",
        "packets",
        "undecodable",
    )

    def __init__(self) -> None:
        self.packets = 0
        self.undecodable = 0
        self.later_fragments = 0
        self.other_protocols = 0
        self.flows = 0
        self.ended: dict[str, int] = {}
        self.fast_path = 0


class Flow:
    """One bidirectional flow. Analyzers read it; only the table writes it.

    Per-direction lists (``pkts``, ``wire_bytes``, ``payload_bytes``) are
    indexed by direction (0 = originator to responder). ``tcp`` holds the
    reassembly state of a TCP flow (``flow.tcp.streams[d]`` has ``delivered``,
    ``gaps``, ``gap_bytes``, ``dup_bytes``, ``midstream``, ``flags``...).
    """

    __slots__ = (
        "__weakref__",
        "_hosts",
        "_table",
        "_uid",
        "active",
        "alive",
        "closing",
        "ipver",
        "last_ns",
        "nswaps",
        "number",
        "okey",
        "orig_addr",
        "orig_p",
        "payload_bytes",
        "pkts",
        "proto",
        "resp_addr",
        "resp_p",
        "rkey",
        "role",
        "start_ns",
        "states",
        "tcp",
        "vlan",
        "wire_bytes",
    )

    def __init__(
        self, table: FlowTable, number: int, d: Decoded, orig_is_src: bool, role: str
    ) -> None:
        self._table = table
        self.number = number  # 1, 2, ... in order of creation
        self._uid: str | None = None
        self.proto = d[3]
        self.ipver = d[2]
        if orig_is_src:
            self.orig_addr, self.orig_p, self.resp_addr, self.resp_p = d[4], d[6], d[5], d[7]
        else:
            self.orig_addr, self.orig_p, self.resp_addr, self.resp_p = d[5], d[7], d[4], d[6]
        self.okey = (self.orig_addr, self.resp_addr, self.orig_p, self.resp_p, self.proto)
        self.rkey = (self.resp_addr, self.orig_addr, self.resp_p, self.orig_p, self.proto)
        self.vlan = d[15]
        self.role = role
        self.start_ns = d[0]
        self.last_ns = d[0]
        self.pkts = [0, 0]
        self.wire_bytes = [0, 0]
        self.payload_bytes = [0, 0]  # L4 payload on the wire (captured or not)
        self.states: list[Any] = []
        self.active = 0  # bit i: analyzer i attached and not done
        self.tcp: TcpConn | None = None
        self.closing = 0  # packet time at which a closed connection ends (0: open)
        self.alive = True
        self.nswaps = 0
        self._hosts: tuple[str, str] | None = None

    # ---- read-only views -------------------------------------------------
    @property
    def uid(self) -> str:
        """A Zeek-looking connection id, unique within the run (from ``number``)."""
        if self._uid is None:
            self._uid = make_uid(self.number)
        return self._uid

    @property
    def orig_h(self) -> str:
        return self._host_text()[0]

    @property
    def resp_h(self) -> str:
        return self._host_text()[1]

    def _host_text(self) -> tuple[str, str]:
        if self._hosts is None:
            self._hosts = (addr_text(self.orig_addr), addr_text(self.resp_addr))
        return self._hosts

    @property
    def role_certain(self) -> bool:
        """True when a SYN or SYN-ACK decided the roles."""
        return self.role in (ROLE_SYN, ROLE_SYNACK)

    @property
    def streams(self) -> list[TcpStream] | None:
        return None if self.tcp is None else self.tcp.streams

    def swap_roles(self, evidence: str = ROLE_PAYLOAD, force: bool = False) -> bool:
        """Make the responder the originator, citing ``evidence``.

        Refused (returns False) when a SYN or SYN-ACK already decided the
        roles, unless ``force``. Every analyzer holding state for the flow
        gets ``on_roles_swapped``; directions passed afterwards follow the
        new roles.
        """
        if not self.alive or (self.role_certain and not force):
            return False
        self._table.swap(self, evidence)
        return True

    def __repr__(self) -> str:
        return (
            f"Flow({self.uid} {self.orig_h}:{self.orig_p} -> {self.resp_h}:{self.resp_p}"
            f" proto={self.proto} role={self.role})"
        )


class FlowTable:
    """Flows keyed by 5-tuple, with TCP reassembly, feeding ``analyzers`` in order."""

    def __init__(
        self, analyzers: Sequence[Analyzer[Any]], config: FlowConfig | None = None
    ) -> None:
        if len(analyzers) > 60:
            raise ValueError("too many analyzers")
        self.config = cfg = config or FlowConfig()
        self.analyzers = list(analyzers)
        self.stats = TableStats()
        self.limits = ReassemblyLimits(
            cfg.max_pending_bytes,
            cfg.max_pending_segments,
            cfg.reassembly_budget_bytes,
            cfg.hold_packets,
            cfg.hold_bytes,
        )
        self._idle_ns = int(cfg.idle_timeout_s * NS)
        self._active_ns = int(cfg.active_timeout_s * NS)
        self._close_ns = int(cfg.close_delay_s * NS)
        self._sweep_ns = max(1, int(cfg.sweep_interval_s * NS))
        self._protocols = cfg.protocols
        self._index: dict[tuple[bytes, bytes, int, int, int], _Entry] = {}
        self._lru: OrderedDict[Flow, None] = OrderedDict()
        self._closing: deque[tuple[int, Flow]] = deque()
        self._now = -(1 << 62)
        self._next_sweep = -(1 << 62)
        self._nflows = 0
        self._finished = False
        base = Analyzer.__dict__
        self._pkt_hooks = []
        self._data_hooks = []
        self._gap_hooks = []
        self._stream_mask = 0
        self._pkt_mask = 0
        self._nocoalesce_mask = 0
        self._outq: list[tuple[TcpConn, TcpStream]] = []  # streams with queued bytes
        for i, a in enumerate(self.analyzers):
            bit = 1 << i
            cls = type(a)
            if getattr(cls, "on_packet", None) is not base["on_packet"]:
                self._pkt_hooks.append((i, bit, a.on_packet))
                self._pkt_mask |= bit
            if a.wants_stream:
                self._stream_mask |= bit
                if not a.coalesce:
                    self._nocoalesce_mask |= bit
                if getattr(cls, "on_data", None) is not base["on_data"]:
                    self._data_hooks.append((i, bit, a.on_data))
                if getattr(cls, "on_gap", None) is not base["on_gap"]:
                    self._gap_hooks.append((i, bit, a.on_gap))

    def __len__(self) -> int:
        return len(self._lru)

    def flows(self) -> Iterator[Flow]:
        """The live flows, least recently used first."""
        return iter(list(self._lru))

    # ---- input -----------------------------------------------------------
    def run(self, packets: Iterable[Packet]) -> TableStats:
        """Process every packet, then :meth:`finish`; returns the counters."""
        self.feed(packets)
        self.finish()
        return self.stats

    def feed(self, packets: Iterable[Packet]) -> TableStats:
        """Process every packet; more may follow (no :meth:`finish`)."""
        process = self.process_decoded
        stats = self.stats
        for pkt in packets:
            d = decode_fields(pkt[0], pkt[1], pkt[2], pkt[3])
            if d is None:
                stats.packets += 1
                stats.undecodable += 1
                self._tick(pkt[0])
                continue
            process(d)
        return stats

    def run_traces(
        self,
        paths: Sequence[str],
        start_ns: int | None = None,
        end_ns: int | None = None,
        bpf: str | None = None,
        opener: Opener = open_direct,
    ) -> TableStats:
        """Process the packets of ``paths`` in [start_ns, end_ns) matching ``bpf``.

        One classic pcap trace file (plain or compressed) goes through the
        in-place fast path (:meth:`run_records`); several traces (merged in
        time order) and pcapng go through :func:`bulk.trace.iter_packets`.
        The result is the same. Errors are those of ``iter_packets``; a trace
        cut mid-record raises after every whole packet was processed (call
        :meth:`finish` then). ``opener`` opens each path (see
        :class:`bulk.trace.source.Opener`); a trace it reports as vanished is
        left out.
        """
        flt = BpfFilter(bpf) if bpf else None
        records = None
        if len(paths) == 1:
            with contextlib.suppress(Vanished):  # then nothing is read below either
                records = opener(paths[0], pcap_records)
        if records is None:
            return self.run(iter_packets(paths, start_ns, end_ns, bpf, opener))
        try:
            return self.run_records(records, start_ns, end_ns, flt)
        finally:
            records.close()

    def run_records(
        self,
        records: PcapRecords,
        start_ns: int | None = None,
        end_ns: int | None = None,
        flt: BpfFilter | None = None,
    ) -> TableStats:
        """Process a classic pcap trace read in buffers (:mod:`bulk.trace.chunks`),
        then :meth:`finish`.

        The hot path: an in-order TCP segment (IPv4 without options, Ethernet
        with at most one VLAN tag, no SYN/FIN/RST, no hole, stream already
        started) of a flow whose attached analyzers do not need
        ``on_packet`` is decoded where it lies in the chunk and its payload
        delivered directly. Every other packet is decoded in full and goes
        through :meth:`process_decoded`; both paths give the same result.
        """
        process = self.process_decoded
        stats = self.stats
        index: dict[Any, Any] = self._index  # untyped here: the hot loop unpacks entries
        lru_touch = self._lru.move_to_end
        pkt_mask = self._pkt_mask
        active_ns = self._active_ns
        deliver = self.stream_data
        nocoalesce = self._nocoalesce_mask
        ip4 = _IP4_TCP
        eth4 = _ETH_IP4_TCP
        ip6 = _IP6_TCP
        lo = -(1 << 62) if start_ns is None else start_ns
        hi = 1 << 62 if end_ns is None else end_ns
        unpack = records.header.unpack_from
        frac_ns = records.frac_ns
        maxcap = records.maxcap
        lt = records.linktype
        match = flt.program(lt) if flt is not None else None
        ether = lt == LINKTYPE_ETHERNET
        buf = records.refill(b"")
        while buf is not None:
            outq = self._outq
            fast = 0
            n = len(buf)
            pos = 0
            while pos + 16 <= n:
                sec, frac, caplen, wirelen = unpack(buf, pos)
                off = pos + 16
                if off + caplen > n or caplen > maxcap:
                    if caplen > maxcap:
                        records.corrupt(buf, pos, caplen)
                    break  # the record continues in the next buffer
                pos = off + caplen
                ts = sec * 1_000_000_000 + frac * frac_ns
                if ts < lo or ts >= hi:
                    continue
                if match is not None and not match(buf[off : off + caplen]):
                    continue
                if ts > self._now:
                    self._now = ts
                    if ts >= self._next_sweep:
                        self._sweep(ts)
                if ether and caplen >= 54:
                    et, vhl, tot, fragw, proto, src, dst, sport, dport, seq, ack, doff, flags = (
                        eth4(buf, off)
                    )
                    entry = None
                    if et == 0x0800 and vhl == 0x45 and proto == 6:  # the common case
                        if not fragw & 0x3FFF and tot >= 40:  # not a fragment
                            ip = off + 14
                            entry = index.get((src, dst, sport, dport, 6))
                            end = ip + tot
                            hl = 20
                        t0 = t1 = 0
                    else:
                        t0 = et >> 8
                        t1 = et & 0xFF
                        ip = off + 14
                        if et == 0x8100 and caplen >= 58:  # one 802.1Q tag
                            t0 = buf[off + 16]
                            t1 = buf[off + 17]
                            ip = off + 18
                    if t0 == 8 and t1 == 0:  # IPv4 without options, not a fragment
                        if buf[ip] == 0x45 and buf[ip + 9] == 6 and not buf[ip + 6] & 0x3F:
                            tot, fragw, src, dst, sport, dport, seq, ack, doff, flags = ip4(buf, ip)
                            if not fragw & 0x1FFF and tot >= 40:
                                entry = index.get((src, dst, sport, dport, 6))
                                end = ip + tot
                                hl = 20
                    elif (  # IPv6 with TCP right after the fixed header
                        t0 == 0x86
                        and t1 == 0xDD
                        and buf[ip + 6] == 6
                        and buf[ip] >> 4 == 6
                        and caplen >= ip - off + 60
                    ):
                        plen6, src, dst, sport, dport, seq, ack, doff, flags = ip6(buf, ip)
                        if plen6 >= 20:
                            entry = index.get((src, dst, sport, dport, 6))
                            end = ip + 40 + plen6
                            hl = 40
                    if entry is not None and not flags & 7 and end <= off + caplen:
                        flow, d, tcp, s, p = entry
                        if (
                            tcp is not None
                            and not flow.active & pkt_mask
                            and not (active_ns and ts - flow.start_ns >= active_ns)
                        ):
                            dstart = ip + hl + ((doff >> 4) << 2)
                            plen = end - dstart
                            old = False
                            if plen > 0 and tcp.collect and s.started:
                                delta = (seq - s.base - s.nxt) & M32
                                if delta >= 0x80000000:  # starts before the next byte
                                    old = delta + plen <= 0x100000000  # and ends there too
                                    delta = -1
                            else:
                                delta = -1
                            if plen == 0 or (
                                plen > 0
                                and (
                                    not tcp.collect  # nobody wants the bytes: count only
                                    or old
                                    or (delta == 0 and not s.pending and not s.gap_run)
                                )
                            ):
                                # ---- fast path -----------------------------
                                fast += 1
                                lru_touch(flow)
                                if ts > flow.last_ns:  # noqa: PLR1730 - faster than max()
                                    flow.last_ns = ts
                                flow.pkts[d] += 1
                                flow.wire_bytes[d] += wirelen
                                flow.payload_bytes[d] += plen
                                tcp.npkts += 1
                                s.flags |= flags
                                if flags & 0x10:
                                    pa = p.ack_seq
                                    if pa < 0 or 0 < ((ack - pa) & M32) < 0x80000000:
                                        p.ack_seq = ack
                                if old:
                                    s.dup_bytes += plen  # retransmission
                                elif plen and tcp.collect:
                                    s.nxt += plen
                                    s.delivered += plen
                                    if flow.active & nocoalesce:
                                        deliver(tcp, s, buf[dstart:end], ts)
                                    else:
                                        q = s.outq
                                        if q is None:
                                            s.outq = [buf[dstart:end]]
                                            outq.append((tcp, s))
                                        else:
                                            q.append(buf[dstart:end])
                                        s.outq_ts = ts
                                continue
                # ---- slow path: full decode --------------------------------------
                stats.packets += fast
                stats.fast_path += fast
                fast = 0
                dec = decode_fields(ts, wirelen, lt, buf[off : off + caplen])
                if dec is None:
                    stats.packets += 1
                    stats.undecodable += 1
                    continue
                if outq:
                    entry = index.get((dec[4], dec[5], dec[6], dec[7], dec[3]))
                    if entry is not None and entry[0].tcp is not None:
                        self._flush_queued(entry[0].tcp)
                process(dec)
            stats.packets += fast
            stats.fast_path += fast
            fast = 0
            self._flush_all_queued()
            buf = records.refill(buf[pos:])
        self.finish()
        return stats

    def _flush_queued(self, tcp: TcpConn) -> None:
        """Deliver the bytes the fast path queued for both directions of ``tcp``."""
        for s in tcp.streams:
            q = s.outq
            if q is not None:
                s.outq = None
                self.stream_data(tcp, s, q[0] if len(q) == 1 else b"".join(q), s.outq_ts)

    def _flush_all_queued(self) -> None:
        queued = self._outq
        self._outq = []
        for tcp, s in queued:
            q = s.outq
            if q is not None:
                s.outq = None
                self.stream_data(tcp, s, q[0] if len(q) == 1 else b"".join(q), s.outq_ts)

    def process(self, pkt: Packet) -> None:
        """Decode and process one packet."""
        d = decode_fields(pkt[0], pkt[1], pkt[2], pkt[3])
        if d is None:
            self.stats.packets += 1
            self.stats.undecodable += 1
            self._tick(pkt[0])
            return
        self.process_decoded(d)

    def _tick(self, ts: int) -> None:
        """Packet time moved to ``ts`` (every packet counts, decodable or not)."""
        if ts > self._now:
            self._now = ts
            if ts >= self._next_sweep:
                self._sweep(ts)

    def process_decoded(self, d: Decoded) -> None:
        """Process one decoded packet (the hot path)."""
        stats = self.stats
        stats.packets += 1
        ts = d[0]
        if ts > self._now:
            self._now = ts
            if ts >= self._next_sweep:
                self._sweep(ts)
        if d[14] == FRAG_LATER:
            stats.later_fragments += 1
            return
        proto = d[3]
        if self._protocols is not None and proto not in self._protocols:
            stats.other_protocols += 1
            return
        key = (d[4], d[5], d[6], d[7], proto)
        entry = self._index.get(key)
        if entry is None:
            flow = self._new_flow(d)
            direction = 0 if key == flow.okey else 1
        else:
            flow = entry[0]
            direction = entry[1]
            if self._active_ns and ts - flow.start_ns >= self._active_ns:
                self._end(flow, END_ACTIVE)
                flow = self._new_flow(d)
                direction = 0 if key == flow.okey else 1
            elif proto == PROTO_TCP and d[8] & SYN:
                flow, direction = self._syn(flow, direction, d, key)
            self._lru.move_to_end(flow)
        if ts > flow.last_ns:  # noqa: PLR1730 - per packet: faster than max()
            flow.last_ns = ts
        flow.pkts[direction] += 1
        flow.wire_bytes[direction] += d[1]
        flow.payload_bytes[direction] += len(d[12]) + d[13]
        if flow.active and self._pkt_hooks:
            sw = flow.nswaps
            states = flow.states
            for i, bit, fn in self._pkt_hooks:
                if flow.active & bit and fn(flow, states[i], direction, d):
                    self._detach(flow, bit)
            if flow.nswaps != sw:
                direction = 0 if key == flow.okey else 1
        tcp = flow.tcp
        if tcp is not None:
            tcp.segment(direction, d[8], d[9], d[10], d[12], d[13], ts)
            if not flow.closing:
                s0, s1 = tcp.streams  # tcp.finished, inline (this runs per packet)
                if (tcp.rst or (s0.closed and s1.closed)) and flow.alive:
                    flow.closing = deadline = ts + self._close_ns
                    self._closing.append((deadline, flow))

    # ---- flows -----------------------------------------------------------
    def _new_flow(self, d: Decoded) -> Flow:
        proto = d[3]
        sport = d[6]
        dport = d[7]
        role = ROLE_FIRST
        orig_is_src = True
        flags = d[8]
        if proto == PROTO_TCP and flags & SYN:
            if flags & ACK:
                role = ROLE_SYNACK
                orig_is_src = False
            else:
                role = ROLE_SYN
        elif proto in (PROTO_TCP, PROTO_UDP):
            if (sport < 1024) != (dport < 1024):
                role = ROLE_PORT
                orig_is_src = dport < 1024
            elif proto == PROTO_TCP and sport != dport:
                role = ROLE_PORT
                orig_is_src = dport < sport
        self._nflows += 1
        self.stats.flows += 1
        flow = Flow(self, self._nflows, d, orig_is_src, role)
        if proto == PROTO_TCP:
            flow.tcp = TcpConn(flow, self, self.limits)
        self._index_flow(flow)
        self._lru[flow] = None
        states = flow.states
        active = 0
        for i, a in enumerate(self.analyzers):
            st = a.on_flow_start(flow)
            states.append(st)
            if st is not None:
                active |= 1 << i
        flow.active = active
        if flow.tcp is not None and not active & self._stream_mask:
            flow.tcp.stop_collecting()
        if len(self._lru) > self.config.max_flows:
            self._end(next(iter(self._lru)), END_EVICTED)
        return flow

    def _index_flow(self, flow: Flow) -> None:
        """Index both directions: (flow, direction, tcp, own stream, peer stream)."""
        tcp = flow.tcp
        if tcp is None:
            self._index[flow.okey] = (flow, 0, None, None, None)
            self._index[flow.rkey] = (flow, 1, None, None, None)
        else:
            s0, s1 = tcp.streams
            self._index[flow.okey] = (flow, 0, tcp, s0, s1)
            self._index[flow.rkey] = (flow, 1, tcp, s1, s0)

    def _syn(
        self, flow: Flow, direction: int, d: Decoded, key: tuple[bytes, bytes, int, int, int]
    ) -> tuple[Flow, int]:
        """A SYN or SYN-ACK on a known flow: retransmission, new connection, or role fix."""
        tcp = flow.tcp
        assert tcp is not None
        flags = d[8]
        seq = d[9]
        s = tcp.streams[direction]
        if s.isn is not None:
            new = seq != s.isn
        elif tcp.finished or flow.closing:
            new = True
        elif s.started:
            # Midstream flow: a SYN at or shortly before the start is this
            # connection's late SYN; anything else starts a new connection.
            behind = (s.base - seq - 1) & M32
            new = tcp.any_fin_or_rst or behind >= (1 << 20)
        else:
            new = False
        if new:
            self._end(flow, END_REUSED)
            flow = self._new_flow(d)
            return flow, (0 if key == flow.okey else 1)
        rank = _ROLE_RANK.get(flow.role, 2)
        if flags & ACK:
            if direction == 0 and rank < _ROLE_RANK[ROLE_SYNACK]:
                self.swap(flow, ROLE_SYNACK)
                direction = 1
            elif direction == 1 and rank < _ROLE_RANK[ROLE_SYNACK]:
                flow.role = ROLE_SYNACK
        elif direction == 1 and rank < _ROLE_RANK[ROLE_SYN]:
            self.swap(flow, ROLE_SYN)
            direction = 0
        elif direction == 0 and rank < _ROLE_RANK[ROLE_SYN]:
            flow.role = ROLE_SYN
        return flow, direction

    def swap(self, flow: Flow, evidence: str) -> None:
        """Swap the roles of ``flow`` (use :meth:`Flow.swap_roles` from analyzers)."""
        flow.orig_addr, flow.resp_addr = flow.resp_addr, flow.orig_addr
        flow.orig_p, flow.resp_p = flow.resp_p, flow.orig_p
        flow.okey, flow.rkey = flow.rkey, flow.okey
        flow.pkts.reverse()
        flow.wire_bytes.reverse()
        flow.payload_bytes.reverse()
        flow._hosts = None
        flow.role = evidence
        flow.nswaps += 1
        if flow.tcp is not None:
            flow.tcp.swap()
        if flow.alive:
            self._index_flow(flow)
        for a, st in zip(self.analyzers, flow.states, strict=True):
            if st is not None:
                a.on_roles_swapped(flow, st)

    def _detach(self, flow: Flow, bit: int) -> None:
        flow.active &= ~bit
        tcp = flow.tcp
        if tcp is not None and tcp.collect and not flow.active & self._stream_mask:
            tcp.stop_collecting()

    def _end(self, flow: Flow, reason: str) -> None:
        if not flow.alive:
            return
        tcp = flow.tcp
        if tcp is not None:
            s0, s1 = tcp.streams
            if s0.outq is not None or s1.outq is not None:
                self._flush_queued(tcp)
            if tcp.collect:
                # Deliver what is buffered while the flow is still live: analyzers
                # may still swap roles on these bytes.
                tcp.finish(flow.last_ns)
        flow.alive = False
        index = self._index
        del index[flow.okey]
        index.pop(flow.rkey, None)  # okey == rkey for a flow from a host to itself
        del self._lru[flow]
        states = flow.states
        if len(states) == 1:  # one analyzer (bulk backdoor, bulk contents): no zip
            st = states[0]
            if st is not None:
                self.analyzers[0].on_flow_end(flow, st, reason)
        else:
            for a, st in zip(self.analyzers, states, strict=True):
                if st is not None:
                    a.on_flow_end(flow, st, reason)
        flow.states = []
        flow.active = 0
        if tcp is not None:
            # Break the Flow <-> TcpConn cycle: an ended flow is freed by its
            # reference count at once, not by the cyclic garbage collector
            # (which otherwise ran ~7 times as often over a run's short flows).
            tcp.flow = None
        ended = self.stats.ended
        ended[reason] = ended.get(reason, 0) + 1

    def _sweep(self, now: int) -> None:
        self._next_sweep = now + self._sweep_ns
        lru = self._lru
        limit = now - self._idle_ns
        while lru:
            flow = next(iter(lru))
            if flow.last_ns > limit:
                break
            tcp = flow.tcp
            if flow.closing and tcp is not None:
                self._end(flow, END_RST if tcp.rst else END_FIN)
            else:
                self._end(flow, END_IDLE)
        q = self._closing
        while q and q[0][0] <= now:
            deadline, flow = q.popleft()
            if flow.alive and flow.closing == deadline:
                tcp = flow.tcp
                self._end(flow, END_RST if tcp is not None and tcp.rst else END_FIN)

    def finish(self) -> None:
        """End every flow (``eof``) and tell the analyzers the input is over."""
        if self._finished:
            return
        self._finished = True
        for flow in list(self._lru):
            tcp = flow.tcp
            if flow.closing and tcp is not None:
                self._end(flow, END_RST if tcp.rst else END_FIN)
            else:
                self._end(flow, END_EOF)
        for a in self.analyzers:
            a.finish()

    # ---- StreamSink (called by TcpConn) -----------------------------------
    def stream_data(self, conn: TcpConn, stream: TcpStream, data: bytes, ts_ns: int) -> None:
        flow: Flow = conn.flow  # type: ignore[assignment]
        streams = conn.streams
        direction = 0 if streams[0] is stream else 1
        states = flow.states
        for i, bit, fn in self._data_hooks:
            if flow.active & bit:
                sw = flow.nswaps
                if fn(flow, states[i], direction, data, ts_ns):
                    self._detach(flow, bit)
                if flow.nswaps != sw:
                    direction = 0 if streams[0] is stream else 1

    def stream_gap(self, conn: TcpConn, stream: TcpStream, nbytes: int, ts_ns: int) -> None:
        flow: Flow = conn.flow  # type: ignore[assignment]
        streams = conn.streams
        direction = 0 if streams[0] is stream else 1
        states = flow.states
        for i, bit, fn in self._gap_hooks:
            if flow.active & bit:
                sw = flow.nswaps
                if fn(flow, states[i], direction, nbytes, ts_ns):
                    self._detach(flow, bit)
                if flow.nswaps != sw:
                    direction = 0 if streams[0] is stream else 1
