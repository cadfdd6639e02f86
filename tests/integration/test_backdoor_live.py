"""`bulk backdoor` on live traffic: real servers from Debian packages on
non-standard ports, real clients, captured by `bulk capture` into an archive
directory, inside two network namespaces joined by a veth pair that this test
creates (addresses only inside).

Servers: OpenSSH sshd on 2222, busybox httpd on 8081, vsftpd on 2121, an
OpenSSL TLS server (s_server) on 9443, and three busybox nc bind shells (the
classic backdoor): one that prints a root prompt on 4444, one silent on 4445
typed at keystroke pace, and an 'sh -i' on 4446 that warns it has no
terminal. Each must be found over the archive (`--dir`); then again with the
first packets of every connection cut away (midstream: no handshake, client
and server from the payload), for SSH with its banners cut away too, and for
TLS with its hellos cut away (only records left).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bulk.cli import main
from bulk.decode import PROTO_TCP, decode
from bulk.trace import PcapWriter, open_trace
from tests.integration.vethnet import LiveCapture, VethPair

pytestmark = pytest.mark.integration

NEEDED = [
    "ip",
    "tcpdump",
    "/usr/sbin/sshd",
    "ssh",
    "ssh-keygen",
    "busybox",
    "curl",
    "/usr/sbin/vsftpd",
    "openssl",
]


def _missing() -> list[str]:
    return [n for n in NEEDED if shutil.which(n) is None]


@dataclass
class Net:
    server_ns: str
    client_ns: str
    server_ip: str
    client_ip: str
    dev: str


def sh(*cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, timeout=60, **kw)


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if _missing():
        pytest.skip(f"missing tools: {_missing()}")
    tag = os.getpid() % 100000
    octet = os.getpid() % 250 + 1
    n = Net(f"bdS{tag}", f"bdC{tag}", f"10.213.{octet}.1", f"10.213.{octet}.2", f"bdv{tag}")
    try:
        sh("ip", "netns", "add", n.server_ns)
        sh("ip", "netns", "add", n.client_ns)
        sh("ip", "link", "add", n.dev + "s", "type", "veth", "peer", "name", n.dev + "c")
        sh("ip", "link", "set", n.dev + "s", "netns", n.server_ns)
        sh("ip", "link", "set", n.dev + "c", "netns", n.client_ns)
        for ns, dev, ip in (
            (n.server_ns, n.dev + "s", n.server_ip),
            (n.client_ns, n.dev + "c", n.client_ip),
        ):
            sh(*in_ns(ns, "ip", "addr", "add", f"{ip}/30", "dev", dev))
            sh(*in_ns(ns, "ip", "link", "set", dev, "up"))
            sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
            # No offloads: the capture sees wire-sized segments.
            subprocess.run(
                in_ns(ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"),
                capture_output=True,
                check=False,
            )
        yield n
    finally:
        for ns in (n.server_ns, n.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _wait_port(ns: str, ip: str, port: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        probe = f"import socket; socket.create_connection(({ip!r}, {port}), 1).close()"
        r = subprocess.run(in_ns(ns, "python3", "-c", probe), capture_output=True, check=False)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {ip}:{port}")


def _start(procs: list[subprocess.Popen[bytes]], cmd: list[str], **kw: object) -> None:
    procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw))  # type: ignore[call-overload]


def _servers(n: Net, tmp: Path, procs: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    # OpenSSH on 2222, with a generated host key and a client key.
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host_key"))
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "client_key"))
    shutil.copy(tmp / "client_key.pub", tmp / "authorized_keys")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    (tmp / "sshd_config").write_text(
        f"Port 2222\nListenAddress {n.server_ip}\nHostKey {tmp}/host_key\n"
        f"PidFile {tmp}/sshd.pid\nAuthorizedKeysFile {tmp}/authorized_keys\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\n"
    )
    _start(procs, in_ns(n.server_ns, "/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")))
    # busybox httpd on 8081.
    www = tmp / "www"
    www.mkdir()
    (www / "index.html").write_text("<html><body>hello</body></html>\n" * 20)
    _start(
        procs,
        in_ns(n.server_ns, "busybox", "httpd", "-f", "-p", f"{n.server_ip}:8081", "-h", str(www)),
    )
    # vsftpd on 2121, anonymous, passive mode.
    ftp = tmp / "ftp"
    ftp.mkdir(mode=0o755)
    (ftp / "file.txt").write_text("ftp payload\n" * 200)
    empty = tmp / "empty"
    empty.mkdir(mode=0o755)
    (tmp / "vsftpd.conf").write_text(
        f"listen=YES\nlisten_ipv6=NO\nlisten_address={n.server_ip}\nlisten_port=2121\n"
        f"anonymous_enable=YES\nno_anon_password=YES\nanon_root={ftp}\nlocal_enable=NO\n"
        f"write_enable=NO\npasv_enable=YES\npasv_min_port=40000\npasv_max_port=40100\n"
        f"secure_chroot_dir={empty}\nbackground=NO\nisolate=NO\nisolate_network=NO\n"
        "seccomp_sandbox=NO\nftpd_banner=Welcome to the test FTP service.\n"
    )
    os.chmod(tmp / "vsftpd.conf", 0o600)
    _start(procs, in_ns(n.server_ns, "/usr/sbin/vsftpd", str(tmp / "vsftpd.conf")))
    # Bind shells (the classic backdoor): with a root prompt, and without.
    prompt = tmp / "rootsh"
    prompt.write_text("#!/bin/sh\nprintf '# '\nexec /bin/sh\n")
    prompt.chmod(0o755)
    _start(procs, in_ns(n.server_ns, "busybox", "nc", "-l", "-p", "4444", "-e", str(prompt)))
    _start(procs, in_ns(n.server_ns, "busybox", "nc", "-l", "-p", "4445", "-e", "/bin/sh"))
    noisy = tmp / "sh-i"
    noisy.write_text("#!/bin/sh\nexec /bin/sh -i 2>&1\n")  # warns: no tty, no job control
    noisy.chmod(0o755)
    _start(procs, in_ns(n.server_ns, "busybox", "nc", "-l", "-p", "4446", "-e", str(noisy)))
    # OpenSSL's TLS server on 9443 with a throw-away self-signed certificate.
    sh(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(tmp / "tls.key"),
        "-out",
        str(tmp / "tls.crt"),
        "-days",
        "1",
        "-subj",
        "/CN=bulk-test",
    )
    _start(
        procs,
        in_ns(
            n.server_ns,
            "openssl",
            "s_server",
            "-accept",
            f"{n.server_ip}:9443",
            "-cert",
            str(tmp / "tls.crt"),
            "-key",
            str(tmp / "tls.key"),
            "-www",
            "-quiet",
        ),
    )
    ports = {
        "ssh": 2222,
        "http": 8081,
        "ftp": 2121,
        "tls": 9443,
        "root-shell": 4444,
        "interactive": 4445,
        "shell": 4446,
    }
    for port in ports.values():
        if port < 4444:  # a probe would use up the one-shot nc listeners
            _wait_port(n.client_ns, n.server_ip, port)
    time.sleep(0.3)
    return ports


def _type_into(n: Net, port: int, text: str, gap_s: float) -> None:
    """A person at a keyboard: one character per packet, gap_s apart."""
    code = (
        "import socket,sys,time\n"
        f"s=socket.create_connection(('{n.server_ip}',{port}),timeout=5)\n"
        "s.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n"
        "time.sleep(0.3)\n"
        f"for ch in {text!r}:\n"
        "    s.send(ch.encode()); time.sleep(" + repr(gap_s) + ")\n"
        "time.sleep(0.3); s.close()\n"
    )
    sh(*in_ns(n.client_ns, "python3", "-c", code))


def _clients(n: Net, tmp: Path) -> None:
    ssh_opts = [
        "-i",
        str(tmp / "client_key"),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-p",
        "2222",
    ]
    out = sh(
        *in_ns(
            n.client_ns,
            "ssh",
            *ssh_opts,
            f"root@{n.server_ip}",
            "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line $i; sleep 0.05; done",
        )
    )
    assert "line 12" in out.stdout
    out = sh(*in_ns(n.client_ns, "curl", "-s", f"http://{n.server_ip}:8081/index.html"))
    assert "hello" in out.stdout
    out = sh(*in_ns(n.client_ns, "curl", "-s", f"ftp://{n.server_ip}:2121/file.txt"))
    assert "ftp payload" in out.stdout
    out = sh(*in_ns(n.client_ns, "curl", "-sk", f"https://{n.server_ip}:9443/"))
    assert "s_server" in out.stdout
    _type_into(n, 4444, "id\nls /\nexit\n", 0.12)
    _type_into(n, 4445, "echo hi\nuname -a\nls /\nexit\n", 0.15)
    _type_into(n, 4446, "id\nexit\n", 0.12)


@pytest.fixture(scope="module")
def live_pcap(
    net: Net, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, int], Net]]:
    """One run of servers, clients and `bulk capture`, shared by the tests below:
    the archive's one closed trace."""
    tmp_path = tmp_path_factory.mktemp("backdoor_live")
    procs: list[subprocess.Popen[bytes]] = []
    archive = tmp_path / "archive"
    try:
        ports = _servers(net, tmp_path, procs)
        # bulk capture on the server's end of the veth pair, in its namespace.
        pair = VethPair(net.client_ns, net.server_ns, net.dev + "c", net.dev + "s")
        cap = LiveCapture(pair, archive, "--filter", "tcp").start()
        assert cap.proc is not None
        procs.append(cap.proc)
        _clients(net, tmp_path)
        time.sleep(0.5)
        assert cap.stop(signal.SIGTERM) == 0, cap.log_text()
        traces = sorted(archive.glob("bulk-*.pcap"))
        assert len(traces) == 1, (traces, cap.log_text())
        yield traces[0], ports, net
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()


def _findings(
    pcap: Path, capsys: pytest.CaptureFixture[str], *extra: str, dir_: bool = False
) -> list[dict]:
    """`bulk backdoor --json` over one trace (or over an archive directory); the
    same output, every field, with the fast path's C gate and its Python twin."""
    source = ["--dir", str(pcap)] if dir_ else ["-r", str(pcap)]
    outs = []
    for no_native in ("", "1"):
        before = os.environ.get("BULK_NO_NATIVE")
        os.environ["BULK_NO_NATIVE"] = no_native
        try:
            assert main(["backdoor", "--json", *source, *extra]) == 0
        finally:
            if before is None:
                del os.environ["BULK_NO_NATIVE"]
            else:
                os.environ["BULK_NO_NATIVE"] = before
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    return [json.loads(x) for x in outs[0].splitlines()]


def _services(found: list[dict]) -> dict[str, dict]:
    return {f["service"]: f for f in found}


def _conn_key(d: object) -> tuple:
    a = (d.src, d.sport)  # type: ignore[attr-defined]
    b = (d.dst, d.dport)  # type: ignore[attr-defined]
    return (a, b) if a < b else (b, a)


def cut_heads(src: Path, dst: Path, keep: object, first: int) -> int:
    """Copy ``src`` without the first ``first`` packets of each TCP connection
    that ``keep(decoded)`` selects (all when it says True). Returns packets cut."""
    seen: dict[tuple, int] = {}
    cut = 0
    with open_trace(str(src)) as reader, dst.open("wb") as fh:
        w = PcapWriter(fh, reader.linktype)
        for pkt in reader:
            d = decode(pkt)
            if d is not None and d.proto == PROTO_TCP and keep(d):  # type: ignore[operator]
                k = _conn_key(d)
                seen[k] = seen.get(k, 0) + 1
                if seen[k] <= first:
                    cut += 1
                    continue
            w.write(pkt)
        w.close()
    return cut


def test_live_services_found(live_pcap, capsys) -> None:
    pcap, ports, net = live_pcap
    found = _services(_findings(pcap.parent, capsys, dir_=True))
    for service, port in ports.items():
        assert service in found, (service, sorted(found))
        f = found[service]
        assert (f["resp_h"], f["resp_p"]) == (net.server_ip, port), f
        assert f["standard_port"] is False and f["midstream"] is False
    # vsftpd's passive data connection (40000-40100) carries a file, not a service.
    assert len(found) == len(ports)
    # --standard makes them normal; generic and fast paths agree.
    normal = _findings(pcap, capsys, "--standard", "ssh=22,2222", "--standard", "http=8081")
    assert set(_services(normal)) == set(ports) - {"ssh", "http"}
    assert _services(_findings(pcap, capsys, "--no-fast")).keys() == found.keys()


def test_live_midstream(live_pcap, capsys, tmp_path) -> None:
    pcap, ports, net = live_pcap
    mid = tmp_path / "midstream.pcap"
    # The handshake (SYN, SYN-ACK, ACK) of every connection cut away.
    assert cut_heads(pcap, mid, lambda d: True, 3) >= 3 * len(ports)
    r = subprocess.run(
        ["tcpdump", "-nn", "-r", str(mid), "tcp[tcpflags] & tcp-syn != 0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout == ""  # tcpdump as the oracle: not one SYN left
    found = _services(_findings(mid, capsys))
    for service, port in ports.items():
        assert service in found, (service, sorted(found))
        f = found[service]
        assert (f["resp_h"], f["resp_p"]) == (net.server_ip, port), f
        assert f["midstream"] is True and f["standard_port"] is False
    # TLS: client and server from the hellos, not from the ports.
    assert found["tls"]["roles"] == "payload", found["tls"]
    assert "tls-client-hello" in found["tls"]["evidence"], found["tls"]


def test_live_ssh_without_banners(live_pcap, capsys, tmp_path) -> None:
    pcap, _, _ = live_pcap
    deep = tmp_path / "deep.pcap"
    # SSH seen from its 12th packet: no handshake, no banners, only encrypted packets.
    cut_heads(pcap, deep, lambda d: 2222 in (d.sport, d.dport), 12)
    r = subprocess.run(
        ["tcpdump", "-nn", "-A", "-r", str(deep), "tcp port 2222"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "SSH-2.0" not in r.stdout
    found = [f for f in _findings(deep, capsys) if 2222 in (f["resp_p"], f["orig_p"])]
    assert [f["service"] for f in found] == ["ssh"], found
    assert "ssh-len" in found[0]["evidence"] and found[0]["resp_p"] == 2222


def test_live_tls_without_hellos(live_pcap, capsys, tmp_path) -> None:
    pcap, _, net = live_pcap
    # TLS seen from after its last handshake record in clear (ClientHello,
    # ServerHello): only change_cipher_spec and encrypted records are left.
    last = 0
    seen: dict[tuple, int] = {}
    with open_trace(str(pcap)) as reader:
        for pkt in reader:
            d = decode(pkt)
            if d is None or d.proto != PROTO_TCP or 9443 not in (d.sport, d.dport):
                continue
            k = _conn_key(d)
            seen[k] = seen.get(k, 0) + 1
            if d.payload[:1] == b"\x16":
                last = max(last, seen[k])
    assert last >= 4  # SYN, SYN-ACK, ACK, ClientHello at least
    deep = tmp_path / "tls-records.pcap"
    cut_heads(pcap, deep, lambda d: 9443 in (d.sport, d.dport), last)
    # tcpdump as the oracle: no TCP payload on 9443 starts a handshake record any more.
    r = subprocess.run(
        [
            "tcpdump",
            "-nn",
            "-r",
            str(deep),
            "tcp port 9443 and tcp[((tcp[12] & 0xf0) >> 2)] = 0x16",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout == ""
    found = [f for f in _findings(deep, capsys) if 9443 in (f["resp_p"], f["orig_p"])]
    assert [f["service"] for f in found] == ["tls"], found
    f = found[0]
    assert "tls-records" in f["evidence"] and f["midstream"] is True
    assert (f["resp_h"], f["resp_p"]) == (net.server_ip, 9443), f
