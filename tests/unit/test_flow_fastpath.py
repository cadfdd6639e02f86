"""The in-place fast path (FlowTable.run_records) gives exactly what the general path gives."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from bulk.errors import TraceError
from bulk.flow.analyzer import Analyzer
from bulk.flow.table import Flow, FlowConfig, FlowTable
from bulk.trace import chunks as chunks_module
from bulk.trace import iter_packets
from bulk.trace.chunks import pcap_records
from bulk.trace.packet import Packet
from tests.conftest import TRACE_IDS, TRACES
from tests.pktbuild import ACK, FIN, PSH, Conn, write_pcap


class Collect(Analyzer[dict[str, Any]]):
    """Everything observable about each flow, in a comparable form."""

    name = "collect"
    wants_stream = True

    def __init__(self, coalesce: bool) -> None:
        self.coalesce_flag = coalesce
        self.out: list[tuple[Any, ...]] = []

    def on_flow_start(self, flow: Flow) -> dict[str, Any]:
        return {"data": [bytearray(), bytearray()], "calls": 0}

    def on_data(
        self, flow: Flow, st: dict[str, Any], direction: int, data: bytes, ts_ns: int
    ) -> None:
        st["data"][direction] += data
        st["calls"] += 1

    def on_gap(
        self, flow: Flow, st: dict[str, Any], direction: int, nbytes: int, ts_ns: int
    ) -> None:
        st["data"][direction] += b"<<gap %d>>" % nbytes

    def on_roles_swapped(self, flow: Flow, st: dict[str, Any]) -> None:
        st["data"].reverse()

    def on_flow_end(self, flow: Flow, st: dict[str, Any], reason: str) -> None:
        streams = flow.streams or []
        self.out.append(
            (
                flow.uid,
                flow.orig_h,
                flow.orig_p,
                flow.resp_h,
                flow.resp_p,
                flow.role,
                reason,
                flow.start_ns,
                flow.last_ns,
                tuple(flow.pkts),
                tuple(flow.wire_bytes),
                tuple(flow.payload_bytes),
                bytes(st["data"][0]),
                bytes(st["data"][1]),
                tuple(
                    (s.delivered, s.gaps, s.gap_bytes, s.dup_bytes, s.midstream) for s in streams
                ),
            )
        )


class Coalescing(Collect):
    coalesce = True


def both_paths(path: str, coalesce: bool, **cfg: Any) -> tuple[list[Any], list[Any], Any, Any]:
    cls = Coalescing if coalesce else Collect
    general, fast = cls(coalesce), cls(coalesce)
    t1 = FlowTable([general], FlowConfig(**cfg))
    t2 = FlowTable([fast], FlowConfig(**cfg))
    for table, run in (
        (t1, lambda: t1.run(iter_packets([path]))),
        (t2, lambda: t2.run_traces([path])),
    ):
        try:
            run()
        except TraceError:
            table.finish()
    return general.out, fast.out, t1.stats, t2.stats


@pytest.mark.parametrize("coalesce", [False, True])
@pytest.mark.parametrize("trace", TRACES, ids=TRACE_IDS)
def test_fast_path_equals_general_path(trace: Path, coalesce: bool) -> None:
    general, fast, s1, s2 = both_paths(str(trace), coalesce)
    assert fast == general
    assert s1.fast_path == 0
    s2.fast_path = 0
    assert s1 == s2


class FirstBytes(Collect):
    """Done after the first 100 bytes of each direction (a cut-off analyzer)."""

    def on_data(
        self, flow: Flow, st: dict[str, Any], direction: int, data: bytes, ts_ns: int
    ) -> bool:
        super().on_data(flow, st, direction, data, ts_ns)
        return len(st["data"][0]) + len(st["data"][1]) >= 100


@pytest.mark.parametrize("trace", ["irc-dcc-send.pcapng", "zeek-http-get.pcap", "ssh-dups.pcap"])
def test_cut_off_analyzer_same_on_both_paths(trace: str, tmp_path: Path) -> None:
    src = TRACES[0].parent / trace
    path = tmp_path / "t.pcap"
    # As classic pcap, so that run_traces takes the fast path.
    write_pcap(path, iter_packets([str(src)]), nanosecond=True)
    general, fast = FirstBytes(False), FirstBytes(False)
    t1 = FlowTable([general], FlowConfig())
    t1.run(iter_packets([str(path)]))
    t2 = FlowTable([fast], FlowConfig())
    t2.run_traces([str(path)])
    assert fast.out == general.out
    assert t2.stats.fast_path > 0


def interleaved(seed: int, n: int = 40) -> list[Packet]:
    """Many connections at once, with reordering, retransmission, loss, snaplen cuts."""
    rng = random.Random(seed)
    streams = []
    for i in range(n):
        c = Conn(
            c=f"10.{i}.0.1" if i % 3 else f"2001:db8::{i:x}",
            s="10.99.0.2" if i % 3 else "2001:db8::ffff",
            cp=40000 + i,
            cisn=rng.randrange(1 << 32),
            sisn=rng.randrange(1 << 32),
        )
        c.ts += rng.randrange(10**9)
        pk = c.handshake() if i % 7 else []  # some midstream
        offs = [0, 0]
        for _ in range(rng.randrange(1, 30)):
            size = rng.randrange(1, 1400)
            data = bytes(rng.randrange(256) for _ in range(size))
            kind = rng.random()
            d = rng.randrange(2)
            send = c.c2s if d == 0 else c.s2c
            if kind < 0.05:
                offs[d] += size  # lost
                continue
            p = send(offs[d], data)
            if kind < 0.1:
                pk.append(p)  # duplicate
            elif kind < 0.13:
                p = send(offs[d], data, snap=60)  # only the headers captured
            pk.append(p)
            offs[d] += size
        if rng.random() < 0.7:
            pk += [c.c2s(offs[0], b"", FIN | ACK), c.s2c(offs[1], b"", FIN | ACK)]
        for j in range(len(pk) - 1):  # local reordering
            if rng.random() < 0.1:
                pk[j], pk[j + 1] = pk[j + 1], pk[j]
        streams.append(pk)
    out = [p for pk in streams for p in pk]
    out.sort(key=lambda p: p.ts_ns)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("coalesce", [False, True])
def test_fast_path_equals_general_path_on_interleaved_flows(
    tmp_path: Path, seed: int, coalesce: bool
) -> None:
    path = tmp_path / "t.pcap"
    write_pcap(path, interleaved(seed), nanosecond=True)
    general, fast, s1, s2 = both_paths(str(path), coalesce, max_flows=25, idle_timeout_s=0.5)
    assert fast == general
    assert s2.fast_path > s2.packets // 4
    s2.fast_path = 0
    assert s1 == s2
    assert len(general) > 25 and any(g[12] or g[13] for g in general)


def walk(path: Path) -> list[int]:
    """Caplens of the whole records, walked as run_records walks them."""
    records = pcap_records(str(path))
    assert records is not None
    caplens = []
    buf = records.refill(b"")
    while buf is not None:
        pos = 0
        while pos + 16 <= len(buf):
            caplen = records.header.unpack_from(buf, pos)[2]
            if caplen > records.maxcap:
                records.corrupt(buf, pos, caplen)
            if pos + 16 + caplen > len(buf):
                break
            caplens.append(caplen)
            pos += 16 + caplen
        buf = records.refill(buf[pos:])
    return caplens


def test_records_of_a_cut_file_deliver_whole_records_then_raise(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    c = Conn()
    pk = [*c.handshake(), c.c2s(0, b"x" * 100, ACK | PSH)]
    write_pcap(path, pk, nanosecond=True)
    data = path.read_bytes()
    assert walk(path) == [len(p.data) for p in pk]
    path.write_bytes(data[:-30])
    with pytest.raises(TraceError, match="truncated dump file: record has") as err:
        walk(path)
    assert err.value.offset == len(data) - 16 - len(pk[-1].data)
    path.write_bytes(data[: -len(pk[-1].data) - 10])
    with pytest.raises(TraceError, match="record header has 6 of 16"):
        walk(path)
    bad = bytearray(data)
    bad[24 + 8 : 24 + 12] = (10**7).to_bytes(4, "little")  # first caplen absurd
    path.write_bytes(bytes(bad))
    with pytest.raises(TraceError, match="corrupt record") as err:
        walk(path)
    assert err.value.offset == 24
    assert pcap_records(str(TRACES[0].parent / "irc-dcc-send.pcapng")) is None
    assert pcap_records("-") is None


def test_records_span_buffer_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks_module, "CHUNK_SIZE", 37)  # every record straddles reads
    path = tmp_path / "t.pcap"
    write_pcap(path, interleaved(3, n=6), nanosecond=True)
    general, fast, s1, s2 = both_paths(str(path), True)
    assert fast == general and s2.fast_path > 0
    assert len(walk(path)) == s1.packets
