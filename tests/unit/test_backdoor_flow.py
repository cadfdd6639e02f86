"""The per-connection decision of `bulk backdoor` (roles, service, standard ports),
the Zhang-Paxson statistics and the standard-ports configuration."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk.analyzers import backdoor_run
from bulk.analyzers.backdoor import BackdoorConfig, BackdoorFlow, Endpoint, Finding
from bulk.analyzers.interactive import EndpointStats, interactive_verdict, ssh_lengths
from bulk.analyzers.signatures import line_stats
from bulk.analyzers.standard_ports import (
    StandardPorts,
    parse_ports_file,
    parse_standard_option,
)
from bulk.errors import TraceError, UsageError

MS = 1_000_000
A = Endpoint("10.0.0.1", 40000)


def run(
    exchanges: list[tuple[bool, bytes]],
    resp_port: int,
    handshake: bool = True,
    cfg: BackdoorConfig | None = None,
    gap_ms: int = 1,
) -> Finding | None:
    """Feed (from_orig, bytes) deliveries; return the finding (all reported)."""
    cfg = cfg or BackdoorConfig(report_standard=True)
    flow = BackdoorFlow(cfg, A, Endpoint("10.0.0.2", resp_port), 0, handshake)
    ts = 0
    for from_orig, data in exchanges:
        ts += gap_ms * MS
        if flow.data(from_orig, ts, data):
            break
    return flow.finish()


def test_http_on_ssh_port_is_reported_with_server_as_resp() -> None:
    f = run([(True, b"GET / HTTP/1.1\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\n\r\nHi")], 22)
    assert f is not None
    assert (f.service, f.server.port, f.standard, f.roles) == ("http", 22, False, "payload")
    assert f.confidence >= 0.95
    assert "server http-response" in f.evidence and "client http-request" in f.evidence


def test_server_evidence_wins_get_to_ssh_server() -> None:
    # get-to-ssh-server.pcap: the client speaks HTTP, the server answers SSH.
    f = run([(True, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), (False, b"SSH-2.0-OpenSSH_8.7\r\n")], 22)
    assert f is not None
    assert (f.service, f.server.port, f.standard) == ("ssh", 22, True)
    assert "client spoke http" in f.evidence


def test_roles_from_payload_when_the_table_oriented_it_wrong() -> None:
    # Midstream, the table guessed the HTTP client (port 6669) as responder.
    f = run(
        [(False, b"GET /x HTTP/1.1\r\n\r\n"), (True, b"HTTP/1.1 200 OK\r\n\r\n")],
        6669,
        handshake=False,
    )
    assert f is not None
    assert f.server == A and f.client.port == 6669
    assert f.service == "http" and f.standard is False and f.midstream


def test_standard_port_is_not_reported_by_default() -> None:
    cfg = BackdoorConfig()
    assert run([(False, b"SSH-2.0-x\r\n"), (True, b"SSH-2.0-y\r\n")], 22, cfg=cfg) is None
    f = run([(False, b"SSH-2.0-x\r\n"), (True, b"SSH-2.0-y\r\n")], 2222, cfg=cfg)
    assert f is not None and f.service == "ssh" and f.roles == "handshake"


def test_symmetric_banner_midstream_guesses_server_by_standard_port() -> None:
    # No handshake; the originator's port is 22: it is the server.
    cfg = BackdoorConfig(report_standard=True)
    flow = BackdoorFlow(cfg, Endpoint("10.0.0.1", 22), Endpoint("10.0.0.2", 50000), 0, False)
    flow.data(True, 1, b"SSH-2.0-OpenSSH_9\r\n")
    assert flow.data(False, 2, b"SSH-2.0-OpenSSH_9\r\n")
    f = flow.finish()
    assert f is not None and f.server.port == 22 and f.roles == "guess" and f.standard


def test_ftp_versus_smtp_on_a_bare_220() -> None:
    f = run([(False, b"220 hello\r\n"), (True, b"EHLO me\r\n")], 2525)
    assert f is not None and f.service == "smtp"
    f = run([(False, b"220 hello\r\n"), (True, b"USER bob\r\n")], 2121)
    assert f is not None and f.service == "ftp"


def test_root_prompt_only_before_the_client_speaks() -> None:
    f = run([(False, b"# "), (True, b"id\n")], 31337)
    assert f is not None and f.service == "root-shell" and not f.standard
    f = run([(True, b"id\n"), (False, b"# ")], 31337)
    assert f is None or f.service != "root-shell"


def test_decides_early_and_releases_state() -> None:
    cfg = BackdoorConfig(report_standard=True)
    flow = BackdoorFlow(cfg, A, Endpoint("10.0.0.2", 8080), 0, True)
    assert not flow.data(True, 1, b"GET / HTTP/1.1\r\n\r\n")  # waits for the server
    assert flow.data(False, 2, b"HTTP/1.1 200 OK\r\n\r\n")
    assert flow.finish() is not None
    assert not flow.dirs[0].buf and flow.done


def test_server_banner_alone_is_decisive() -> None:
    flow = BackdoorFlow(BackdoorConfig(), A, Endpoint("10.0.0.2", 2121), 0, True)
    assert flow.data(False, 1, b"220 ProFTPD Server ready\r\n")


def test_cutoff_ends_an_unknown_flow() -> None:
    cfg = BackdoorConfig(max_data_packets=4)
    flow = BackdoorFlow(cfg, A, Endpoint("10.0.0.2", 9999), 0, True)
    results = [flow.data(i % 2 == 0, i, bytes([i]) * 100) for i in range(8)]
    assert results[-1] and not any(results[:-1])
    assert flow.finish() is None


def test_gap_closes_the_inspected_prefix() -> None:
    flow = BackdoorFlow(BackdoorConfig(report_standard=True), A, Endpoint("h", 80), 0, True)
    flow.data(True, 1, b"GE")
    flow.gap(True)
    flow.data(True, 2, b"T / HTTP/1.1\r\n\r\n")
    assert flow.finish() is None


def test_midstream_line_scan() -> None:
    f = run(
        [(True, b"ody of an earlier request\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")],
        8081,
        handshake=False,
    )
    assert f is not None and f.service == "http" and f.server.port == 8081
    assert f.confidence < 0.9


def test_interactive_keystrokes() -> None:
    # A person typing: one character every 150 ms, echoed back, then a prompt.
    ex: list[tuple[bool, bytes]] = []
    for ch in b"ls -l /etc\rcat /etc/hostname\rexit\r":
        ex += [(True, bytes([ch])), (False, bytes([ch]) if ch != 13 else b"\r\nbox$ ")]
    f = run(ex, 4444, gap_ms=75)
    assert f is not None and f.service == "interactive" and not f.standard
    assert "gamma" in f.evidence


def test_bulk_transfer_is_not_interactive() -> None:
    ex = [(False, b"x" * 1400) for _ in range(40)]
    assert run([(True, b"go\n"), *ex], 4444, gap_ms=75) is None


def test_ssh_lengths_midstream() -> None:
    # Encrypted SSH-2 keystrokes: 36-byte packets (chacha20-poly1305), both ways.
    rnd = random.Random(7)
    ex = [(i % 2 == 0, rnd.randbytes(36 if i % 3 else 52)) for i in range(20)]
    f = run(ex, 2222, handshake=False, gap_ms=200)
    assert f is not None and f.service == "ssh" and "ssh-len" in f.evidence


def _text_stats(chunks: list[bytes]) -> EndpointStats:
    s = EndpointStats()
    for i, c in enumerate(chunks):
        s.add(i * 20 * MS, c)
        s.text(c)
    return s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\xff", b"a")), max_size=20))
def test_line_counts_do_not_depend_on_packet_boundaries(chunks: list[bytes]) -> None:
    chunks = [c for c in chunks if c]
    whole = b"".join(chunks)
    s = _text_stats(chunks)
    ref = line_stats(whole)
    assert (s.num_lines, s.num_normal_lines) == (ref.num_lines, ref.num_normal_lines)
    assert s.num_7bit_ascii == sum(1 for b in whole if 0 < b < 128)
    assert s.num_bytes == len(whole)


def test_interactive_needs_duration() -> None:
    s = _text_stats([b"a"] * 30)
    assert s.is_interactive()
    assert not interactive_verdict(s, EndpointStats(), 1_000 * MS).interactive
    assert interactive_verdict(s, EndpointStats(), 3_000 * MS).interactive


def test_ssh_lengths_reject_text() -> None:
    o = _text_stats([b"abcd" * 4] * 6)
    r = _text_stats([b"efgh" * 4] * 6)
    assert not ssh_lengths(o, r).interactive


def test_default_standard_ports() -> None:
    std = StandardPorts.default()
    assert std.is_standard("ssh", 22) and not std.is_standard("ssh", 2222)
    assert std.is_standard("http", 80) and std.is_standard("irc", 6669)
    assert not std.is_standard("http", 8888) and not std.is_standard("irc", 8000)
    assert std.ports("root-shell") == frozenset()


def test_ports_file_and_overrides(tmp_path) -> None:
    table = parse_ports_file("# c\nssh 22, 2222\nhttp 80 8000-8002 # x\nssh 2200\n")
    assert table["ssh"] == {22, 2222, 2200}
    assert table["http"] == {80, 8000, 8001, 8002}
    p = tmp_path / "ports"
    p.write_text("ssh 2222\n")
    std = StandardPorts.load(str(p), ["http=8081"])
    assert std.is_standard("ssh", 2222) and not std.is_standard("ssh", 22)
    assert std.ports("http") == {8081}
    assert std.is_standard("ftp", 21)  # kept from the defaults
    assert parse_standard_option("telnet=") == ("telnet", frozenset())


@pytest.mark.parametrize(
    "text", ["ssh\n", "ssh 0\n", "ssh 70000\n", "ssh 22-x\n", "Bad! 22\n", "ssh 30-20\n"]
)
def test_ports_file_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_ports_file(text)


def test_ports_option_errors(tmp_path) -> None:
    with pytest.raises(UsageError):
        parse_standard_option("ssh")
    with pytest.raises(UsageError):
        StandardPorts.load(str(tmp_path / "missing"))


def _corpus_findings() -> list[Finding]:
    found: list[Finding] = []
    data = Path(__file__).resolve().parents[1] / "data"
    for path in sorted(data.iterdir()):
        if path.name.endswith((".pcap", ".pcapng")):
            try:
                backdoor_run.run([str(path)], BackdoorConfig(report_standard=True), found.append)
            except TraceError:
                pass
    return found


def test_json_line_is_json_dumps() -> None:
    """--json's hand-written line is json.dumps of to_json(), byte for byte: every
    finding of the corpus (--all) and text that needs escaping."""
    found = _corpus_findings()
    assert len(found) > 30
    odd = found[0]._replace(
        uid='C"\\\n\x00\x7f',
        client=Endpoint("fe80::1%eth0", 0),
        server=Endpoint("h\u00e9\u20ac\U0001f600", 65535),
        evidence="client 'GET /\u00e4\t\r' ; \"q\"",
        confidence=1.0,
        ts_ns=1_795_780_800_123_456_789,
        standard=True,
        midstream=True,
    )
    for f in [*found, odd, odd._replace(confidence=0.3, ts_ns=0, standard=False)]:
        assert f.json_line() == json.dumps(f.to_json()) + "\n"
