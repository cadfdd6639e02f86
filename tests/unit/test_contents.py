"""`bulk contents` output: names, reuse suffixes, gap markers, summary, limits, safety."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bulk.analyzers.contents import ContentsAnalyzer, stream_name
from bulk.cli import main
from bulk.errors import BulkError, UsageError
from bulk.flow.analyzer import Analyzer
from bulk.flow.table import Flow, FlowConfig, FlowTable
from bulk.trace.packet import Packet
from tests.pktbuild import ACK, FIN, PSH, RST, Conn, write_pcap

S = 1_000_000_000


def contents(tmp: Path, packets: list[Packet], **options: Any) -> list[dict[str, Any]]:
    out = tmp / "out"
    analyzer = ContentsAnalyzer(str(out), **options)
    FlowTable([analyzer], FlowConfig(protocols=frozenset({6}))).run(packets)
    return [json.loads(line) for line in (out / "contents.jsonl").read_text().splitlines()]


def body(tmp: Path, name: str | None) -> bytes:
    assert name is not None
    return (tmp / "out" / name).read_bytes()


def test_names_and_summary_of_one_connection(tmp_path: Path) -> None:
    c = Conn()
    pk = [
        *c.handshake(),
        c.c2s(0, b"GET / HTTP/1.0\r\n\r\n"),
        c.s2c(0, b"HTTP/1.0 200 OK\r\n"),
        c.c2s(18, b"", FIN | ACK),
        c.s2c(17, b"", FIN | ACK),
    ]
    [rec] = contents(tmp_path, pk)
    assert rec["orig_file"] == "contents.10.0.0.1.40000.10.0.0.2.80"
    assert rec["resp_file"] == "contents.10.0.0.2.80.10.0.0.1.40000"
    assert body(tmp_path, rec["orig_file"]) == b"GET / HTTP/1.0\r\n\r\n"
    assert body(tmp_path, rec["resp_file"]) == b"HTTP/1.0 200 OK\r\n"
    assert (rec["orig_bytes"], rec["resp_bytes"], rec["orig_gaps"], rec["resp_gaps"]) == (
        18,
        17,
        0,
        0,
    )
    assert rec["end_reason"] == "fin" and rec["roles"] == "syn"
    assert rec["start"].endswith("Z") and rec["duration"] > 0
    assert not rec["orig_midstream"] and not rec["resp_midstream"]
    mode = os.stat(tmp_path / "out" / rec["orig_file"]).st_mode & 0o777
    assert mode & 0o007 == 0  # never world-readable


def test_ipv6_names_are_portable(tmp_path: Path) -> None:
    c = Conn(c="2001:db8::1", s="fe80::2:3")
    [rec] = contents(tmp_path, [*c.handshake(), c.c2s(0, b"v6")])
    assert rec["orig_file"] == "contents.2001-db8--1.40000.fe80--2-3.80"
    assert rec["orig_h"] == "2001:db8::1" and rec["resp_file"] is None
    assert all(ch not in rec["orig_file"] for ch in ':/\\<>|*?"')


def test_reused_4tuple_gets_a_distinct_suffix(tmp_path: Path) -> None:
    first = Conn(cisn=100)
    second = Conn(cisn=7_000_000)
    third = Conn(cisn=9_000_000)
    second.ts = first.ts + 20 * S
    third.ts = first.ts + 40 * S
    pk = []
    for i, c in enumerate((first, second, third)):
        pk += [*c.handshake(), c.c2s(0, b"conn %d" % i), c.s2c(0, b"reply %d" % i)]
        pk += [c.c2s(6, b"", FIN | ACK), c.s2c(7, b"", FIN | ACK)]
    recs = contents(tmp_path, pk)
    assert [r["orig_file"].rsplit(".", 1)[-1] for r in recs] == ["80", "c2", "c3"]
    assert [r["resp_file"].rsplit(".", 1)[-1] for r in recs] == ["40000", "c2", "c3"]
    for i, r in enumerate(recs):
        assert body(tmp_path, r["orig_file"]) == b"conn %d" % i
        assert body(tmp_path, r["resp_file"]) == b"reply %d" % i
    assert len({r["uid"] for r in recs}) == 3


def test_suffix_pairs_stay_together_when_only_one_side_spoke_before(tmp_path: Path) -> None:
    a = Conn(cisn=100)
    b = Conn(cisn=5_000_000)
    b.ts = a.ts + 20 * S
    pk = [*a.handshake(), a.s2c(0, b"only the server"), a.c2s(0, b"", RST)]
    pk += [*b.handshake(), b.c2s(0, b"client first"), b.s2c(0, b"server later")]
    recs = contents(tmp_path, pk)
    assert recs[0]["orig_file"] is None and recs[0]["resp_file"].endswith(".40000")
    assert recs[1]["orig_file"].endswith(".c2") and recs[1]["resp_file"].endswith(".c2")
    assert body(tmp_path, recs[1]["orig_file"]) == b"client first"
    assert body(tmp_path, recs[1]["resp_file"]) == b"server later"


def test_gap_marker_and_counts(tmp_path: Path) -> None:
    c = Conn()
    pk = [*c.handshake(), c.c2s(0, b"AAAA"), c.c2s(1464, b"BBBB"), c.c2s(1468, b"", FIN | ACK)]
    [rec] = contents(tmp_path, pk)
    assert body(tmp_path, rec["orig_file"]) == b"AAAA<<gap 1460>>BBBB"
    assert (rec["orig_bytes"], rec["orig_gaps"], rec["orig_gap_bytes"]) == (8, 1, 1460)


def test_midstream_connection_is_marked(tmp_path: Path) -> None:
    c = Conn(cp=51000, sp=8080)
    [rec] = contents(tmp_path, [c.s2c(100, b"...rest of a response"), c.c2s(50, b"next request")])
    assert rec["orig_midstream"] and rec["resp_midstream"] and rec["roles"] == "port"
    assert rec["resp_p"] == 8080
    assert body(tmp_path, rec["resp_file"]) == b"...rest of a response"


def test_few_open_files_and_small_buffers_still_give_every_byte(tmp_path: Path) -> None:
    conns = [Conn(cp=1000 + i) for i in range(12)]
    pk = []
    for c in conns:
        c.ts = conns[0].ts
        pk += c.handshake()
    expect: dict[int, bytes] = {}
    for r in range(20):  # interleave all connections, many small writes
        for i, c in enumerate(conns):
            chunk = bytes([65 + i]) * (r + 1)
            pk.append(c.c2s(len(expect.get(i, b"")), chunk))
            expect[i] = expect.get(i, b"") + chunk
    recs = contents(tmp_path, pk, max_open_files=2, chunk_bytes=16, buffer_bytes=64)
    got = {r["orig_p"] - 1000: body(tmp_path, r["orig_file"]) for r in recs}
    assert got == expect


def test_refuses_an_outdir_with_contents_in_it(tmp_path: Path) -> None:
    (tmp_path / "contents.1.2.3.4.5.6.7.8.9.10").write_text("old")
    with pytest.raises(UsageError, match="already holds"):
        ContentsAnalyzer(str(tmp_path))


def test_names_cannot_escape_outdir() -> None:
    assert stream_name("10.0.0.1", 1, "10.0.0.2", 2) == "contents.10.0.0.1.1.10.0.0.2.2"
    for bad in ("../../etc", "a/b", "..", "x\0y"):
        with pytest.raises(BulkError, match="unsafe"):
            stream_name(bad, 1, "10.0.0.2", 2)


def test_symlink_planted_in_outdir_is_not_followed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    analyzer = ContentsAnalyzer(str(out))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, out / "contents.10.0.0.1.40000.10.0.0.2.80")
    c = Conn()
    table = FlowTable([analyzer], FlowConfig(protocols=frozenset({6})))
    table.run([*c.handshake(), c.c2s(0, b"attack")])
    assert victim.read_text() == "precious"
    [rec] = [json.loads(x) for x in (out / "contents.jsonl").read_text().splitlines()]
    assert rec["orig_file"].endswith(".c2")


def test_cli_filter_window_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = Conn(cp=1111), Conn(cp=2222)
    b.ts = a.ts + 100 * S
    trace = tmp_path / "t.pcap"
    write_pcap(trace, [*a.handshake(), a.c2s(0, b"a"), *b.handshake(), b.c2s(0, b"b")])
    out = tmp_path / "f"
    assert main(["contents", "-q", "-r", str(trace), "-f", "port 2222", "-o", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "contents.jsonl").read_text().splitlines()]
    assert [r["orig_p"] for r in recs] == [2222]
    out = tmp_path / "w"
    start = str(a.ts // S + 50)
    assert main(["contents", "-q", "-r", str(trace), "--start", start, "-o", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "contents.jsonl").read_text().splitlines()]
    assert [r["orig_p"] for r in recs] == [2222]
    out = tmp_path / "rel"
    assert main(["contents", "-q", "--dir", str(tmp_path), "--end", "+10", "-o", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "contents.jsonl").read_text().splitlines()]
    assert [r["orig_p"] for r in recs] == [1111]
    assert main(["contents", "-r", str(trace), "-f", "port 2x", "-o", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert "bad filter" in capsys.readouterr().err
    assert main(["contents", "-o", str(tmp_path / "none")]) == 2
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(trace.read_bytes()[:-10])
    out = tmp_path / "cut"
    assert main(["contents", "-q", "-r", str(cut), "-o", str(out)]) == 3
    recs = [json.loads(x) for x in (out / "contents.jsonl").read_text().splitlines()]
    assert [r["orig_p"] for r in recs] == [1111, 2222]  # everything before the cut
    assert recs[1]["orig_bytes"] == 0 and recs[0]["orig_bytes"] == 1
    assert PSH  # flags helper imported for readers of this file


def test_summary_line_is_the_record_as_json(tmp_path: Path) -> None:
    """The hand-formatted JSON line says exactly what the record dict says."""

    class Quoter(Analyzer[int]):
        name = "quoter"
        wants_stream = True

        def on_flow_start(self, flow: Flow) -> int:
            return 1

        def on_data(self, flow: Flow, state: int, direction: int, data: bytes, ts_ns: int) -> None:
            flow.swap_roles('a "quoted" \\ role')

    out = tmp_path / "o"
    analyzer = ContentsAnalyzer(str(out))
    seen: list[dict[str, Any]] = []
    original = analyzer.on_flow_end

    def spy(flow: Any, state: Any, reason: str) -> None:
        original(flow, state, reason)  # writes the files, then the line
        seen.append(analyzer._record(flow, state, reason))

    analyzer.on_flow_end = spy  # type: ignore[method-assign]
    a, b = Conn(c="2001:db8::7", s="2001:db8::8"), Conn(cp=5)
    pk = [*a.handshake(), a.c2s(0, b"x"), b.s2c(0, b"midstream")]
    FlowTable([Quoter(), analyzer], FlowConfig()).run(pk)
    lines = [json.loads(x) for x in (out / "contents.jsonl").read_text().splitlines()]
    assert lines == seen and len(lines) == 2
    assert {r["roles"] for r in lines} == {"syn", 'a "quoted" \\ role'}
