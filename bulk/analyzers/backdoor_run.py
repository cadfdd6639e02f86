"""Feed traces to the backdoor analyzer: the generic path and the fast path.

Generic path: ``bulk.trace.iter_packets`` (any input: pcap, pcapng, gzip,
zstd, stdin; several files merged in time order; time window; BPF) into the
one flow table with the backdoor analyzer.

Fast path (plain pcap/pcapng files, no time window): only the first
``flow_cutoff`` head packets of each IPv4 flow direction become Python
objects, and none of a connection the analyzer has decided. Files are read
one after the other (sorted by their first packet), sharing one flow table,
so a connection that spans two rotated files is one connection.

Classic pcap files go through the *gate* (``csrc/flowgate.c`` built as
``bulk._flowgate``; its Python twin :mod:`bulk.analyzers.flowgate` under
``BULK_NO_NATIVE=1``): one pass over the file, in file order, that delivers
exactly what the two libpcap passes below delivered (see ``_gate_file``):

* IPv4 (untagged or under one or two VLAN tags): TCP heads only (BPF: SYN,
  FIN or RST set, or a payload; or the user's filter), the first
  ``flow_cutoff`` of each direction in each file;
* everything else (IPv6, MPLS, ...) that is not IPv4: all of it, where the
  analyzer's own cut-off (DONE) stops the reassembly of decided connections;
* never a non-SYN packet of a decided connection (IPv4 without options, IPv6
  with TCP after the fixed header): the analyzer puts both directions' raw
  address/port bytes in the gate's done set when it decides, and takes them
  out when the connection ends.

pcapng files (and link types whose records may exceed 262144 bytes) go to
libpcap with pcapy-ng's ``loop_filtered``, which classifies every packet in
C: a first pass with the heads filter (or the user's) keeps the first
``flow_cutoff`` packets of each IPv4 flow direction; a second pass with the
BPF ``not ip`` reads the rest (its classes cannot tell "not IPv4" from "IPv4
beyond the cut-off", hence two passes); decided connections' packets are
dropped in the callback by the same done set.

What the fast path cannot see: packets of a connection beyond its first
``flow_cutoff`` per direction. The analyzer needs fewer than that to decide
from signatures (its own limits are smaller); the interactive detector sees
at most that many packets per direction.
"""

from __future__ import annotations

import contextlib
import gc
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import pcapy

from bulk import native
from bulk.analyzers import flowgate
from bulk.analyzers.backdoor import BackdoorAnalyzer, BackdoorConfig, Finding
from bulk.decode import PROTO_TCP, decode_fields
from bulk.errors import FilterError, TraceError, TruncatedTrace, Vanished
from bulk.flow.table import FlowConfig, FlowTable, TableStats
from bulk.slotted import Slotted
from bulk.trace import iter_packets, open_trace
from bulk.trace.bpf import _LINKTYPE_TO_DLT, compile_bpf
from bulk.trace.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
)
from bulk.trace.source import Opener, open_direct
from bulk.trace.stream import open_error, sniff_compression

if TYPE_CHECKING:
    from bulk.flow.table import Flow

# Where the IPv4 header starts, per link type the C classifier can handle.
_L2_OFFSET = {LINKTYPE_ETHERNET: 14, LINKTYPE_LINUX_SLL: 16, LINKTYPE_RAW: 0, LINKTYPE_IPV4: 0}
_PLAIN_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.open", ".pcapng.open")
_CLASS_FLOW_HEAD = 1 << 1
_CLASS_OTHER = 1 << 0
_NO_CUTOFF = 2**31 - 1
# SYN, FIN or RST, or a TCP payload (IPv4), untagged or under one or two VLAN tags.
_HEAD = (
    "tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"
    " or (ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0"
)
HEADS_FILTER = f"tcp and ({_HEAD})"
HEADS_FILTER_ETHERNET = " or ".join(
    [f"(tcp and ({_HEAD}))", f"(vlan and tcp and ({_HEAD}))", f"(vlan and tcp and ({_HEAD}))"]
)
_ETHERTYPE_OFFSET = {LINKTYPE_ETHERNET: 12, LINKTYPE_LINUX_SLL: 14}
_PORTS = struct.Struct("!HH")
# libpcap's optimizer refuses a program that can accept nothing: 'not ip and
# (net 10.0.0.0/8)' is one (the second pass's filter for an IPv4-only -f).
_REJECTS_ALL = "expression rejects all packets"
BPF_RET_K = 0x06
# Link types libpcap allows records above 262144 bytes for (DBUS, USBPCAP, EBHSCR).
_OTHER_MAX_SNAPLEN = frozenset({231, 249, 279})
_WITH_SYN = frozenset(bytes([b]) for b in range(256) if b & 0x02)  # TCP flags bytes


class RunStats(Slotted):
    """What one run read and how (for --stats and the benchmark).

    ``path``: "fast" or "generic"; ``gate``: on the fast path, the packet gate
    that read the classic pcap files ("c", "python"); ``packets_skipped``:
    head packets of decided connections, not decoded. (A plain class:
    ``dataclasses`` costs about 7 ms of start-up.)"""

    __slots__ = (
        "decided_early",
        "files",
        "flows",
        "gate",
        "packets_dropped_in_c",
        "packets_skipped",
        "packets_to_python",
        "path",
        "table",
    )

    def __init__(self) -> None:
        self.path = "generic"
        self.gate = ""
        self.files = 0
        self.packets_to_python = 0
        self.packets_dropped_in_c = 0
        self.packets_skipped = 0
        self.flows = 0
        self.decided_early = 0
        self.table = TableStats()


def flow_config() -> FlowConfig:
    """The flow table settings for backdoor analysis: TCP only."""
    return FlowConfig(protocols=frozenset({PROTO_TCP}))


def fast_path_ok(paths: list[str], start_ns: int | None, end_ns: int | None) -> bool:
    """Can every input go through libpcap directly, with no time window?"""
    if start_ns is not None or end_ns is not None or not paths:
        return False
    return all(p != "-" and p.endswith(_PLAIN_SUFFIXES) for p in paths)


def run(
    paths: list[str],
    cfg: BackdoorConfig,
    emit: Callable[[Finding], None],
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    bpf: str | None = None,
    fast: bool | None = None,
    flow_cutoff: int = 16,
    opener: Opener = open_direct,
) -> RunStats:
    """Analyse ``paths``; findings go to ``emit``. ``fast=None`` chooses.

    Raises TraceError/FilterError before any output for unusable input, and
    TruncatedTrace after processing every whole packet of a cut file. Each
    path is opened through ``opener`` (see :class:`bulk.trace.source.Opener`):
    one it reports as vanished is left out.
    """
    if fast is None:
        fast = fast_path_ok(paths, start_ns, end_ns)
    stats = RunStats()
    impl = gate_module()
    decided = impl.Gate()  # the done set (and, for classic pcap files, the reader)
    if fast:
        keys: dict[Flow, tuple[bytes, bytes]] = {}
        analyzer = BackdoorAnalyzer(
            cfg, emit, partial(_add_keys, decided, keys), partial(_drop_keys, decided, keys)
        )
    else:
        analyzer = BackdoorAnalyzer(cfg, emit)
    table = FlowTable([analyzer], flow_config())
    with _young_gc_only():
        if fast:
            stats.path = "fast"
            _run_fast(
                paths, table, bpf, flow_cutoff, stats, decided=decided, opener=opener,
                at_eof=partial(_stop_observing, analyzer),
            )  # fmt: skip
            stats.gate = "python" if impl is flowgate else "c"
        else:
            try:
                table.run(iter_packets(paths, start_ns, end_ns, bpf, opener))
            finally:
                table.finish()
            stats.files = len(paths)
            stats.packets_to_python = table.stats.packets
    stats.flows = analyzer.flows_seen
    stats.decided_early = analyzer.flows_decided_early
    stats.table = table.stats
    return stats


@contextlib.contextmanager
def _young_gc_only() -> Iterator[None]:
    """While the table runs, the cyclic garbage collector scans young objects only
    (and old ones after 1000 young collections instead of 10).

    Open connections are many long-lived objects (a flow, its streams, the
    analyzer's state: about 25 each) that the default thresholds scan again in
    every older-generation collection, though nothing of them is cyclic
    garbage (an ended flow is freed by its reference count, see
    FlowTable._end). On bench/out/contents-300mb.pcap (7,245 connections open
    at the end) that was 48 ms of 0.70 s of CPU; with this, 17 ms. What was
    imported before is frozen (never scanned: modules, functions, classes).
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(thresholds[0], 1000, 1000)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _keys(flow: Flow) -> tuple[bytes, bytes]:
    """Source and destination address then the ports, as they lie in a packet of
    each direction (IPv4 header bytes 12..24 without options; IPv6 bytes 8..44
    with TCP right after the fixed header)."""
    o, r = flow.orig_addr, flow.resp_addr
    return (
        o + r + _PORTS.pack(flow.orig_p, flow.resp_p),
        r + o + _PORTS.pack(flow.resp_p, flow.orig_p),
    )


def _add_keys(decided: flowgate.Gate, keys: dict[Flow, tuple[bytes, bytes]], flow: Flow) -> None:
    keys[flow] = both = _keys(flow)  # 12 bytes for IPv4, 36 for IPv6: never confused
    decided.add(both[0])
    decided.add(both[1])


def _drop_keys(decided: flowgate.Gate, keys: dict[Flow, tuple[bytes, bytes]], flow: Flow) -> None:
    both = keys.pop(flow, None)  # None: never decided
    if both is not None:
        decided.discard(both[0])
        decided.discard(both[1])


def _stop_observing(analyzer: BackdoorAnalyzer) -> None:
    """Every file was read: the connections still open end now, and the gate's
    done set no longer matters (7,245 connections, 14,490 keys not taken out
    one by one at the end of bench/out/contents-300mb.pcap)."""
    analyzer.on_decided = analyzer.on_ended = None


def _first_ts(path: str) -> tuple[int, int]:
    """(first packet time, link type) of a trace; raises TraceError if unusable."""
    with open_trace(path) as reader:
        for pkt in reader:
            return pkt.ts_ns, reader.linktype
        return 0, reader.linktype


def _run_fast(
    paths: Iterable[str],
    table: FlowTable,
    bpf: str | None,
    cutoff: int,
    stats: RunStats,
    *,
    decided: flowgate.Gate,
    opener: Opener = open_direct,
    at_eof: Callable[[], None] | None = None,
) -> None:
    order = []
    for path in paths:
        try:
            first, linktype = opener(path, _first_ts)  # a bad file fails before any output
        except Vanished:
            continue
        if bpf:
            compile_bpf(bpf, linktype)  # a bad filter too
        order.append((first, path))
    order.sort()
    errors: list[TraceError] = []
    try:
        for _, path in order:
            stats.files += 1
            _fast_file(
                path, table, bpf, cutoff, stats=stats, errors=errors, decided=decided,
                opener=opener,
            )  # fmt: skip
    finally:
        if at_eof is not None:
            at_eof()
        table.finish()
    if errors:
        raise errors[0]


def _fast_file(
    path: str,
    table: FlowTable,
    bpf: str | None,
    cutoff: int,
    *,
    stats: RunStats,
    errors: list[TraceError],
    decided: flowgate.Gate,
    opener: Opener = open_direct,
) -> None:
    """One file, opened once: libpcap's passes reopen it by its descriptor, so
    that the file read is the one opened even if rotation, compression or
    retention renames or deletes it meanwhile."""
    try:
        fd, where = opener(path, _pin)
    except Vanished:
        return
    except OSError as exc:
        errors.append(open_error(path, exc))
        return
    try:
        source = f"/proc/self/fd/{fd}"
        if sniff_compression(source) is not None:
            # Compressed since it was listed: libpcap cannot read it, the trace layer can.
            before = table.stats.packets
            try:
                table.feed(iter_packets([path], bpf=bpf, opener=opener))
            except TraceError as exc:
                errors.append(exc)
            stats.packets_to_python += table.stats.packets - before
            return
        head = flowgate.prepare(fd)
        if head is not None and head.linktype not in _OTHER_MAX_SNAPLEN:
            _gate_file(fd, head, where, table, bpf, cutoff, stats=stats, errors=errors,
                       gate=decided)  # fmt: skip
        else:  # pcapng (or a link type whose records may be larger): libpcap reads it
            _fast_passes(source, where, table, bpf, cutoff, stats=stats, errors=errors,
                         decided=decided)  # fmt: skip
    finally:
        os.close(fd)


def gate_module() -> Any:
    """``bulk._flowgate`` when built and enabled, else its twin :mod:`bulk.analyzers.flowgate`."""
    return native.load("flowgate") or flowgate


def _gate_file(  # noqa: PLR0917 - as _fast_passes
    fd: int,
    head: flowgate.FileHeader,
    path: str,
    table: FlowTable,
    bpf: str | None,
    cutoff: int,
    *,
    stats: RunStats,
    errors: list[TraceError],
    gate: flowgate.Gate,
) -> None:
    """One classic pcap file through the gate, in one pass: the packets the two
    libpcap passes below would hand to Python (see csrc/flowgate.c), no others."""
    impl = sys.modules[type(gate).__module__]  # bulk._flowgate or its twin: their errors
    dlt = _gate_open(gate, fd, head, bpf, cutoff)
    tstats = table.stats
    process = table.process_decoded
    before = gate.stats()
    try:
        for ts, wirelen, data in gate:
            d = decode_fields(ts, wirelen, dlt, data)
            if d is None:
                tstats.packets += 1
                tstats.undecodable += 1
            else:
                process(d)
    except impl.TruncatedError as exc:
        errors.append(TruncatedTrace(path, None, str(exc)))
    except impl.CorruptError as exc:
        errors.append(TraceError(path, None, str(exc)))
    except OSError as exc:
        errors.append(open_error(path, exc))
    finally:
        gate.close()  # the caller closes the descriptor next
    after = gate.stats()
    stats.packets_to_python += after["delivered"] - before["delivered"]
    stats.packets_skipped += after["skipped"] - before["skipped"]
    stats.packets_dropped_in_c += (after["records"] - before["records"]) - (
        after["candidates"] - before["candidates"]
    )


def _gate_open(
    gate: flowgate.Gate, fd: int, head: flowgate.FileHeader, bpf: str | None, cutoff: int
) -> int:
    """Start ``gate`` on the file open on ``fd``; returns libpcap's link type (DLT)."""
    linktype = head.linktype
    dlt = _LINKTYPE_TO_DLT.get(linktype, linktype)  # what libpcap calls it
    known = _L2_OFFSET.get(dlt)
    if known is None:
        # The classifier does not know this link type: every packet (the filter's).
        heads, other = None, flowgate.programs([bpf], linktype)[0]
        l2 = et_off = -1
    else:
        heads_expr = bpf or (HEADS_FILTER_ETHERNET if dlt == LINKTYPE_ETHERNET else HEADS_FILTER)
        heads = flowgate.programs([heads_expr], linktype)[0]
        try:
            other = flowgate.programs([f"not ip and ({bpf})" if bpf else "not ip"], linktype)[0]
        except FilterError as exc:
            if _REJECTS_ALL not in str(exc):
                raise
            # an IPv4-only user filter: nothing is 'not ip'
            other = flowgate.pack([(BPF_RET_K, 0, 0, 0)])
        l2, et_off = known, _ETHERTYPE_OFFSET.get(dlt, -1)
    fns = flowgate.bpf_functions()
    gate.open(fd, head.swapped, head.nsec, head.snaplen, l2, et_off, cutoff, heads, other, fns)
    return dlt


def _pin(path: str) -> tuple[int, str]:
    """A descriptor of the file at ``path`` (and the path)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC), path


def _fast_passes(
    source: str,
    path: str,
    table: FlowTable,
    bpf: str | None,
    cutoff: int,
    *,
    stats: RunStats,
    errors: list[TraceError],
    decided: flowgate.Gate,
) -> None:
    """libpcap's passes over ``source`` (the file ``path``)."""
    tstats = table.stats
    passes: list[tuple[str | None, int, int]] = []
    reader = _open(source, path, errors)
    if reader is None:
        return
    linktype = reader.datalink()
    known = _L2_OFFSET.get(linktype)
    deliver = _deliverer(table, linktype, known, decided)
    deliver6 = _deliverer(table, linktype, known, decided, version=6)
    if known is None:
        # The C classifier does not know this link type: every packet to Python.
        passes.append((bpf, _CLASS_OTHER | _CLASS_FLOW_HEAD, _NO_CUTOFF))
    else:
        heads = HEADS_FILTER_ETHERNET if linktype == LINKTYPE_ETHERNET else HEADS_FILTER
        passes.append((bpf or heads, _CLASS_FLOW_HEAD, cutoff))
        # Not IPv4 (IPv6, MPLS, ...): not classified in C, so all of it.
        # 'not ip' comes first so that a 'vlan' in the user's filter cannot
        # shift its offsets.
        passes.append((f"not ip and ({bpf})" if bpf else "not ip", _CLASS_OTHER, _NO_CUTOFF))
    for i, (expr, mask, flow_cutoff) in enumerate(passes):
        if i > 0:
            reader = _open(source, path, errors)
            if reader is None:
                return
        if expr:
            try:
                reader.setfilter(expr)
            except pcapy.PcapError as exc:
                if i == 0 or _REJECTS_ALL not in str(exc):
                    raise
                reader.close()  # an IPv4-only user filter: nothing is 'not ip'
                continue
        before = tstats.packets
        try:
            counts = reader.loop_filtered(
                -1,
                deliver if i == 0 else deliver6,
                admit_mask=mask,
                flow_cutoff=flow_cutoff,
                l2_offset=known or 0,
            )
        except pcapy.PcapError as exc:
            errors.append(_trace_error(path, str(exc)))
            return
        finally:
            reader.close()
        stats.packets_to_python += counts[0]
        stats.packets_dropped_in_c += counts[1]
        # Every packet the callback did not skip was counted by the table.
        stats.packets_skipped += counts[0] - (tstats.packets - before)


def _deliverer(
    table: FlowTable, linktype: int, l2: int | None, decided: flowgate.Gate, version: int = 4
) -> Callable[[pcapy.Pkthdr, bytes, int], None]:
    """The per-packet callback of libpcap's passes: a packet of a connection
    the analyzer has decided is dropped by one set lookup on its raw address and
    port bytes, before anything is decoded (``version`` 4: IPv4 without
    options; 6: IPv6 with TCP right after the fixed header; never a SYN: a SYN
    may open a new connection on the same ports); the rest is decoded and goes
    to the flow table."""
    process = table.process_decoded
    tstats = table.stats
    base = l2 or 0
    if version == 4:
        key_lo, key_hi = base + 12, base + 24  # source, destination, then the TCP ports
        ver_at, ver_mask, ver_val = base, 0xFF, 0x45  # version 4, 20-byte header
        proto_at = base  # (the heads filter and the table take TCP only: no check)
        proto = 0x45
        flags_at = base + 33  # TCP flags after a 20-byte IPv4 header
        ethertype = b"\x08\x00"
    else:
        key_lo, key_hi = base + 8, base + 44
        ver_at, ver_mask, ver_val = base, 0xF0, 0x60
        proto_at = base + 6  # next header: TCP right after the fixed header
        proto = 6
        flags_at = base + 53  # TCP flags after the 40-byte IPv6 header
        ethertype = b"\x86\xdd"
    et_lo = _ETHERTYPE_OFFSET.get(linktype, 0)
    et_hi = et_lo + 2 if linktype in _ETHERTYPE_OFFSET else et_lo
    if linktype not in _ETHERTYPE_OFFSET:
        ethertype = b""  # raw IP: the version nibble decides
    no_skipping: frozenset[bytes] = frozenset()
    done: flowgate.Gate | frozenset[bytes] = no_skipping if l2 is None else decided
    # (A packet cut before its TCP flags has no SYN to keep.)

    def deliver(hdr: pcapy.Pkthdr, data: bytes, _cls: int) -> None:
        if (
            data[key_lo:key_hi] in done
            and data[ver_at] & ver_mask == ver_val
            and data[proto_at] == proto
            and data[et_lo:et_hi] == ethertype
            and data[flags_at : flags_at + 1] not in _WITH_SYN
        ):
            return  # a decided connection: nothing left to learn from it
        sec, usec = hdr.getts()
        d = decode_fields(sec * 1_000_000_000 + usec * 1000, hdr.getlen(), linktype, data)
        if d is None:
            tstats.packets += 1
            tstats.undecodable += 1
        else:
            process(d)

    return deliver


def _open(source: str, path: str, errors: list[TraceError]) -> pcapy.Reader | None:
    try:
        return pcapy.open_offline(source)
    except pcapy.PcapError as exc:
        errors.append(_trace_error(path, str(exc)))
        return None


def _trace_error(path: str, message: str) -> TraceError:
    if "truncated" in message:
        return TruncatedTrace(path, None, message)
    return TraceError(path, None, message)


def input_size(paths: Iterable[str]) -> int:
    """Total bytes of the input files (for rates in --stats)."""
    total = 0
    for p in paths:
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    return total
