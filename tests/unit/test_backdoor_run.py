"""The backdoor fast path (libpcap heads, decided connections skipped before
decoding) against the generic path, which reads every packet: same findings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bulk.analyzers import backdoor_run
from bulk.analyzers.backdoor import BackdoorConfig
from bulk.cli import main
from bulk.trace import PcapWriter
from bulk.trace.packet import LINKTYPE_ETHERNET
from tests.pktbuild import ACK, FIN, PSH, Conn

NS = 1_000_000_000


def _findings(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> list[dict]:
    assert main(["backdoor", "--json", "-r", str(path), *extra]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize(
    ("client", "server"), [("10.0.0.1", "10.0.0.2"), ("2001:db8::1", "2001:db8::2")]
)
def test_port_reuse_after_a_decided_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], client: str, server: str
) -> None:
    # HTTP on 5555, decided after its first bytes, then more of its body (dropped
    # before decoding); 30 s later the same client port opens a new connection
    # (new SYN, new ISN) that speaks SSH. Its SYN must not be skipped as a
    # packet of the decided connection. IPv4 (libpcap's first pass) and IPv6
    # (the second).
    path = tmp_path / "reuse.pcap"
    with path.open("wb") as fh:
        w = PcapWriter(fh, LINKTYPE_ETHERNET)
        http = Conn(c=client, s=server, sp=5555, cisn=1000, sisn=5000)
        for p in http.handshake():
            w.write(p)
        req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        w.write(http.c2s(0, req))
        w.write(http.s2c(0, resp))
        body = b"x" * 100
        for i in range(5):
            w.write(http.s2c(len(resp) + i * len(body), body))
        w.write(http.c2s(len(req), b"", ACK | FIN))
        w.write(http.s2c(len(resp) + 5 * len(body), b"", ACK | FIN))
        ssh = Conn(c=client, s=server, sp=5555, cisn=900_000, sisn=700_000)
        ssh.ts = http.ts + 30 * NS
        for p in ssh.handshake():
            w.write(p)
        w.write(ssh.s2c(0, b"SSH-2.0-OpenSSH_9.2\r\n", ACK | PSH))
        w.write(ssh.c2s(0, b"SSH-2.0-OpenSSH_9.2\r\n", ACK | PSH))
        w.close()
    fast = _findings(capsys, path)
    generic = _findings(capsys, path, "--no-fast")
    assert sorted(f["service"] for f in generic) == ["http", "ssh"]
    assert sorted(fast, key=lambda f: f["ts"]) == sorted(generic, key=lambda f: f["ts"])
    stats = backdoor_run.run([str(path)], BackdoorConfig(), lambda f: None)
    assert stats.path == "fast"
    assert stats.packets_skipped >= 6  # the rest of the HTTP body and its FINs


@pytest.mark.parametrize(
    "name", ["zeek-ssh-single-conn.pcap", "irc-dcc-send.pcapng", "ssh-on-port-80.pcap"]
)
def test_ipv4_only_filter(capsys: pytest.CaptureFixture[str], name: str) -> None:
    # The fast path's second filter, 'not ip and (FILTER)', accepts nothing for
    # an IPv4-only filter, and libpcap refuses to compile such a program: the
    # run failed (exit 2). Both paths now give the generic path's findings.
    path = Path(__file__).resolve().parents[1] / "data" / name
    flt = "tcp and net 0.0.0.0/0"
    fast = _findings(capsys, path, "--all", "-f", flt)
    generic = _findings(capsys, path, "--all", "-f", flt, "--no-fast")
    assert fast == generic and fast
