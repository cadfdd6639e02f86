"""The flow table (bulk.flow.table): keys, roles, timeouts, eviction, reuse, plugins."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk.decode import Decoded
from bulk.flow.analyzer import DONE, END_EVICTED, END_FIN, END_IDLE, END_REUSED, END_RST, Analyzer
from bulk.flow.registry import ANALYZERS, create, resolve
from bulk.flow.table import Flow, FlowConfig, FlowTable, make_uid
from bulk.trace.packet import LINKTYPE_ETHERNET, Packet
from tests.pktbuild import ACK, FIN, PSH, RST, SYN, Conn, ether, ipv4, tcp_packet, udp_header

S = 1_000_000_000


class Recorder(Analyzer[dict[str, Any]]):
    """Keeps everything it is told, per flow."""

    name = "recorder"
    wants_stream = True

    def __init__(self, done_after: int | None = None) -> None:
        self.flows: list[tuple[Flow, dict[str, Any]]] = []
        self.done_after = done_after
        self.finished = False

    def on_flow_start(self, flow: Flow) -> dict[str, Any]:
        st: dict[str, Any] = {"data": [b"", b""], "pkts": 0, "end": None, "swaps": 0, "gaps": []}
        self.flows.append((flow, st))
        return st

    def on_packet(self, flow: Flow, state: dict[str, Any], direction: int, pkt: Decoded) -> None:
        state["pkts"] += 1

    def on_data(
        self, flow: Flow, state: dict[str, Any], direction: int, data: bytes, ts_ns: int
    ) -> bool | None:
        state["data"][direction] += data
        if self.done_after is not None and len(state["data"][direction]) >= self.done_after:
            return DONE
        return None

    def on_gap(
        self, flow: Flow, state: dict[str, Any], direction: int, nbytes: int, ts_ns: int
    ) -> None:
        state["gaps"].append((direction, nbytes))

    def on_roles_swapped(self, flow: Flow, state: dict[str, Any]) -> None:
        state["swaps"] += 1
        state["data"].reverse()

    def on_flow_end(self, flow: Flow, state: dict[str, Any], reason: str) -> None:
        assert state["end"] is None, "on_flow_end twice"
        state["end"] = reason

    def finish(self) -> None:
        self.finished = True


def run(packets: list[Packet], *analyzers: Analyzer[Any], **cfg: Any) -> FlowTable:
    table = FlowTable(list(analyzers), FlowConfig(**cfg))
    table.run(packets)
    return table


def test_full_connection_roles_data_and_fin() -> None:
    c = Conn()
    pk = [
        *c.handshake(),
        c.c2s(0, b"GET /"),
        c.s2c(0, b"200 OK"),
        c.c2s(5, b"", FIN | ACK),
        c.s2c(6, b"", FIN | ACK),
    ]
    rec = Recorder()
    table = run(pk, rec)
    [(flow, st)] = rec.flows
    assert (flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p) == (
        "10.0.0.1",
        40000,
        "10.0.0.2",
        80,
    )
    assert flow.role == "syn" and flow.role_certain
    assert st["data"] == [b"GET /", b"200 OK"]
    assert st["end"] == END_FIN and st["pkts"] == len(pk)
    assert flow.pkts == [4, 3] and rec.finished
    assert table.stats.ended == {END_FIN: 1}


def test_synack_first_in_file_still_makes_client_the_originator() -> None:
    c = Conn(sp=6669, cp=80)  # ports that would mislead a port-based guess
    syn, synack = c.syn(), c.synack()
    rec = Recorder()
    run([synack, syn, c.c2s(0, b"hi")], rec)
    [(flow, st)] = rec.flows
    assert (flow.orig_h, flow.orig_p) == ("10.0.0.1", 80)
    assert flow.role == "syn" and st["data"][0] == b"hi"


def test_late_syn_corrects_port_guess_and_tells_analyzers() -> None:
    c = Conn(cp=80, sp=40000)  # client uses port 80: the port guess is wrong
    rec = Recorder()
    run([c.s2c(0, b"x"), c.syn(), c.synack(), c.c2s(0, b"req"), c.s2c(1, b"yz")], rec)
    [(flow, st)] = rec.flows
    assert flow.orig_p == 80 and flow.role == "syn" and st["swaps"] == 1
    assert st["data"] == [b"req", b"xyz"]


def test_midstream_roles_from_ports() -> None:
    c = Conn(cp=51000, sp=8080)
    rec = Recorder()
    run([c.s2c(0, b"response"), c.c2s(0, b"more request")], rec)
    [(flow, st)] = rec.flows
    assert flow.resp_p == 8080 and flow.role == "port"
    assert st["data"] == [b"more request", b"response"]
    assert flow.streams is not None and all(s.midstream for s in flow.streams)


def test_analyzer_can_swap_uncertain_roles_but_not_handshake_roles() -> None:
    class Swapper(Recorder):
        def on_data(
            self, flow: Flow, state: dict[str, Any], direction: int, data: bytes, ts_ns: int
        ) -> None:
            if data.startswith(b"SSH-") and direction == 0 and "swapped" not in state:
                state["swapped"] = flow.swap_roles("ssh banner")
                direction ^= 1  # this chunk now travels responder -> originator
            super().on_data(flow, state, direction, data, ts_ns)

    c = Conn(cp=2222, sp=50000)  # server on the higher port: the port guess is wrong
    rec = Swapper()
    run([c.s2c(0, b"SSH-2.0-x\r\n"), c.c2s(0, b"SSH-2.0-y\r\n")], rec)
    [(flow, st)] = rec.flows
    assert flow.resp_p == 50000 and flow.role == "ssh banner" and st["swaps"] == 1
    assert st["data"] == [b"SSH-2.0-y\r\n", b"SSH-2.0-x\r\n"]
    rec2 = Swapper()
    c2 = Conn()
    run([*c2.handshake(), c2.c2s(0, b"SSH-2.0-z\r\n")], rec2)
    assert rec2.flows[0][1]["swapped"] is False


def test_port_reuse_starts_a_new_connection() -> None:
    a = Conn(cisn=100)
    b = Conn(cisn=900_000)
    b.ts = a.ts + 10 * S
    first = [*a.handshake(), a.c2s(0, b"one"), a.c2s(3, b"", FIN | ACK), a.s2c(0, b"", FIN | ACK)]
    second = [*b.handshake(), b.c2s(0, b"two")]
    rec = Recorder()
    table = run(first + second, rec, close_delay_s=60)
    assert [st["data"][0] for _, st in rec.flows] == [b"one", b"two"]
    assert [st["end"] for _, st in rec.flows] == [END_REUSED, "eof"]
    assert rec.flows[0][0].uid != rec.flows[1][0].uid
    assert table.stats.flows == 2


def test_retransmitted_syn_is_not_a_new_connection() -> None:
    c = Conn()
    syn = c.syn()
    rec = Recorder()
    run([syn, syn, c.synack(), c.synack(), c.c2s(0, b"a")], rec)
    assert len(rec.flows) == 1


def test_idle_timeout_on_packet_time() -> None:
    a, b = Conn(cp=1), Conn(cp=2)
    pa = [*a.handshake(), a.c2s(0, b"a")]
    b.ts = a.ts + 100 * S
    pb = [*b.handshake(), b.c2s(0, b"b")]
    rec = Recorder()
    run(pa + pb, rec, idle_timeout_s=50)
    assert [st["end"] for _, st in rec.flows] == [END_IDLE, "eof"]


def test_close_delay_then_fin_or_rst() -> None:
    a = Conn(cp=1)
    pa = [*a.handshake(), a.c2s(0, b"x"), a.s2c(0, b"", RST)]
    b = Conn(cp=2)
    b.ts = a.ts + 30 * S
    rec = Recorder()
    run([*pa, *b.handshake()], rec, close_delay_s=5)
    assert rec.flows[0][1]["end"] == END_RST


def test_lru_eviction_ends_flows_properly() -> None:
    conns = [Conn(cp=p) for p in (1, 2, 3)]
    rec = Recorder()
    pk = []
    for c in conns:
        c.ts = conns[0].ts
        pk += [*c.handshake(), c.c2s(10, b"later"), c.c2s(0, b"0123456789")]
    table = run(pk[:5] + pk[5:], rec, max_flows=2)
    ends = [st["end"] for _, st in rec.flows]
    assert ends.count(END_EVICTED) == 1 and ends[0] == END_EVICTED
    assert all(st["data"][0] == b"0123456789later" for _, st in rec.flows)
    assert table.stats.ended[END_EVICTED] == 1


def test_evicted_flow_with_hole_reports_the_gap() -> None:
    a, b = Conn(cp=1), Conn(cp=2)
    rec = Recorder()
    run([*a.handshake(), a.c2s(5, b"tail"), *b.handshake()], rec, max_flows=1)
    (_, st) = rec.flows[0]
    assert st["end"] == END_EVICTED and st["gaps"] == [(0, 5)] and st["data"][0] == b"tail"


def test_done_detaches_and_stops_reassembly() -> None:
    c = Conn()
    rec = Recorder(done_after=3)
    run([*c.handshake(), c.c2s(0, b"abc"), c.c2s(10, b"zzz"), c.c2s(3, b"def")], rec)
    [(flow, st)] = rec.flows
    assert st["data"][0] == b"abc" and st["end"] == "eof"
    assert flow.tcp is not None and not flow.tcp.collect


def test_analyzer_that_ignores_a_flow_gets_nothing() -> None:
    class TcpOnly(Recorder):
        def on_flow_start(self, flow: Flow) -> dict[str, Any] | None:
            return super().on_flow_start(flow) if flow.proto == 6 else None

    udp = udp_header(5353, 53, 1) + b"q"
    pk = Packet(1, 0, LINKTYPE_ETHERNET, ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp), 0x0800))
    pk = pk._replace(wirelen=len(pk.data))
    rec = TcpOnly()
    table = run([pk], rec)
    assert rec.flows == [] and table.stats.flows == 1


def test_protocol_filter_and_fragments_counted() -> None:
    udp = udp_header(5353, 53, 1) + b"q"
    frame = ether(ipv4("10.0.0.1", "10.0.0.2", 17, udp), 0x0800)
    later = ether(ipv4("10.0.0.1", "10.0.0.2", 6, b"x" * 8, frag_offset=8), 0x0800)
    garbage = b"\x00" * 10
    pk = [Packet(1, len(f), LINKTYPE_ETHERNET, f) for f in (frame, later, garbage)]
    table = run(pk, Recorder(), protocols=frozenset({6}))
    s = table.stats
    assert (s.packets, s.other_protocols, s.later_fragments, s.undecodable, s.flows) == (
        3,
        1,
        1,
        1,
        0,
    )


def test_active_timeout_splits_long_flows() -> None:
    c = Conn()
    pk = [*c.handshake(), c.c2s(0, b"a")]
    c.ts += 20 * S
    pk.append(c.c2s(1, b"b"))
    rec = Recorder()
    run(pk, rec, active_timeout_s=10)
    assert [st["end"] for _, st in rec.flows] == ["active", "eof"]
    assert [st["data"][0] for _, st in rec.flows] == [b"a", b"b"]


def test_bidirectional_key_one_flow_for_both_directions() -> None:
    pk = [
        tcp_packet(i, "10.0.0.1", 1000, "10.0.0.2", 2000, 1, 1, ACK | PSH, b"a")
        if i % 2
        else tcp_packet(i, "10.0.0.2", 2000, "10.0.0.1", 1000, 1, 1, ACK | PSH, b"b")
        for i in range(1, 7)
    ]
    table = run(pk, Recorder())
    assert table.stats.flows == 1


def test_uids_unique_and_registry() -> None:
    uids = {make_uid(n) for n in range(1, 20000)}
    assert len(uids) == 19999 and all(len(u) == 11 and u[0] == "C" for u in uids)
    assert "contents" in ANALYZERS
    for name in ANALYZERS:  # every entry imports, is an Analyzer, and carries its name
        cls = resolve(name)
        assert cls.name == name
    with pytest.raises(ValueError, match="unknown analyzer"):
        create("no-such-analyzer")


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        FlowConfig(idle_timeout_s=0)
    with pytest.raises(ValueError):
        FlowConfig(max_flows=0)


def test_swap_after_syn_still_consistent_for_ipv6() -> None:
    c = Conn(c="2001:db8::1", s="2001:db8::2")
    rec = Recorder()
    run([*c.handshake(), c.c2s(0, b"six")], rec)
    [(flow, st)] = rec.flows
    assert flow.orig_h == "2001:db8::1" and flow.ipver == 6 and st["data"][0] == b"six"


def test_unused_constants_are_consistent() -> None:
    assert SYN | ACK == 0x12 and PSH == 0x08


@settings(max_examples=60, deadline=None)
@given(
    hosts=st.lists(
        st.tuples(st.ip_addresses(v=4).map(str), st.integers(1, 65535)), min_size=2, max_size=6
    ),
    pairs=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.booleans()), max_size=30),
)
def test_flow_key_is_symmetric(
    hosts: list[tuple[str, int]], pairs: list[tuple[int, int, bool]]
) -> None:
    """Packets between two endpoints, in either direction, always meet in one flow."""
    pk = []
    expect: set[frozenset[tuple[str, int]]] = set()
    for n, (i, j, flip) in enumerate(pairs):
        a, b = hosts[i % len(hosts)], hosts[j % len(hosts)]
        if a == b:
            continue
        src, dst = (b, a) if flip else (a, b)
        pk.append(tcp_packet(n + 1, src[0], src[1], dst[0], dst[1], 1, 1, ACK, b"x"))
        expect.add(frozenset((a, b)))
    rec = Recorder()
    run(pk, rec)
    got = [frozenset(((f.orig_h, f.orig_p), (f.resp_h, f.resp_p))) for f, _ in rec.flows]
    assert len(got) == len(set(got)) == len(expect) and set(got) == expect
    assert sum(state["pkts"] for _, state in rec.flows) == len(pk)
