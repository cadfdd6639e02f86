"""Payload signatures of `bulk backdoor`, on payloads taken from the corpus traces
(file named per case) and on minimal counter-examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk.analyzers import signatures as sig
from bulk.analyzers.signatures import Role

# (payload, expected service, expected evidence, expected role); the payloads are
# the first bytes of one direction of a connection in tests/data/<trace>.
POSITIVES = [
    # ssh-on-port-80.pcap, server and client
    (b"SSH-2.0-OpenSSH_5.8p1 Debian-1ubuntu3\r\n\x00\x00\x03T", "ssh", "ssh-banner", Role.EITHER),
    (b"SSH-1.99-OpenSSH_3.9p1\n\x00\x00\x02|", "ssh", "ssh-banner", Role.EITHER),
    # http-lower-case-nonstandard-port.pcap: nginx answers in lower case
    (b"http/1.1 200 OK\r\nServer: nginx/1.18.0 (Ubuntu)\r\n", "http", "http-response", Role.SERVER),
    (b"HTTP/1.1 403 Forbidden\r\nConnection: keep-alive\r\n", "http", "http-response", Role.SERVER),
    (
        b"GET /download/CHANGES.bro-aux.txt HTTP/1.1\r\nUser-Agent: Wget",
        "http",
        "http-request",
        Role.CLIENT,
    ),
    (
        b"POST /exhmedmx HTTP/1.1\r\nCache-Control: no-store\r\n",
        "http",
        "http-request",
        Role.CLIENT,
    ),
    # mixed-vlan-mpls.pcap: an HTTP/0.9 request
    (b"GET /\r\n\r\n", "http", "http-request", Role.CLIENT),
    (
        b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n",
        "http-proxy",
        "http-proxy-request",
        Role.CLIENT,
    ),
    (b"CONNECT example.org:443 HTTP/1.1\r\n\r\n", "http-proxy", "http-proxy-request", Role.CLIENT),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", "http", "http2-preface", Role.CLIENT),
    # zeek-ftp-retr.pcap, zeek-ftp-ipv6.pcap
    (b"220 ftp.ncsa.illinois.edu FTP Server (Apache/2.2)\r\n", "ftp", "ftp-banner", Role.SERVER),
    (
        b"220 ftp.NetBSD.org FTP server (NetBSD-ftpd 20100320) ready.\r\n",
        "ftp",
        "ftp-banner",
        Role.SERVER,
    ),
    (b"220 welcome\r\n", "ftp", "220-banner", Role.SERVER),
    (b"USER anonymous\r\nPASS chrome@example.com\r\nSYST\r\n", "ftp", "ftp-command", Role.CLIENT),
    (b"AUTH TLS\r\n", "ftp", "ftp-command", Role.CLIENT),
    # zeek-smtp.pcap
    (
        b"220-xc90.websitewelcome.com ESMTP Exim 4.69 #1 Mon, 05 Oct 2009\r\n",
        "smtp",
        "smtp-banner",
        Role.SERVER,
    ),
    (b"220 uprise ESMTP SubEthaSMTP null\r\n250-uprise\r\n", "smtp", "smtp-banner", Role.SERVER),
    (b"EHLO GP\r\nAUTH LOGIN\r\n", "smtp", "smtp-helo", Role.CLIENT),
    (b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n", "pop3", "pop3-greeting", Role.SERVER),
    (b"CAPA\r\n", "pop3", "pop3-command", Role.CLIENT),
    (
        b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n",
        "imap",
        "imap-greeting",
        Role.SERVER,
    ),
    (b"a001 CAPABILITY\r\n", "imap", "imap-command", Role.CLIENT),
    # arkime-irc.pcap, irc-basic.pcap, irc-dcc-send.pcapng, irc-starttls.pcap
    (b"USER xxxxx +iw xxxxx :Xxxxxx Xxxx\r\nNICK molochte", "irc", "irc-register", Role.CLIENT),
    (b"CAP LS 302\r\nJOIN :\r\n", "irc", "irc-register", Role.CLIENT),
    (
        b":card.freenode.net NOTICE * :*** Looking up your hostname...\r\n",
        "irc",
        "irc-server",
        Role.SERVER,
    ),
    (
        b":irc.joulunet.org 670  :STARTTLS successful, go ahead with TLS handshake\r\n",
        "irc",
        "irc-server",
        Role.SERVER,
    ),
    # suricata-telnet.pcap: the server asks for terminal options, the client offers them
    (
        b"\xff\xfd%\xff\xfb\x03\xff\xfd\x18\xff\xfd\x1f\xff\xfd \xff\xfd!",
        "telnet",
        "telnet-iac",
        Role.SERVER,
    ),
    (
        b'\xff\xfd\x03\xff\xfb\x18\xff\xfb\x1f\xff\xfb \xff\xfb!\xff\xfb"',
        "telnet",
        "telnet-iac",
        Role.CLIENT,
    ),
    (b"\x00alice\x00alice\x00xterm-256color/38400\x00", "rlogin", "rlogin-handshake", Role.CLIENT),
    # ndpi-rsh.pcap
    (b"1022\x00lns\x00root\x00mkdir testdir\x00", "rsh", "rsh-handshake", Role.CLIENT),
    (b"\x00bob\x00bob\x00ls /tmp\x00", "rsh", "rsh-handshake", Role.CLIENT),
    # ssl-and-ssh-using-sslh.pcap
    (
        bytes.fromhex("16030100cc010000c8030356c4820a18e300ad769c571b059b44f6"),
        "tls",
        "tls-client-hello",
        Role.CLIENT,
    ),
    (
        bytes.fromhex("16030300590200005503038 4c16f31faf0b166bd75f6db772aabe9".replace(" ", "")),
        "tls",
        "tls-server-hello",
        Role.SERVER,
    ),
    (
        b"\x13BitTorrent protocol\x00\x00\x00\x00\x00\x10\x00\x05",
        "bittorrent",
        "bittorrent-handshake",
        Role.EITHER,
    ),
    (b"GNUTELLA CONNECT/0.6\r\nUser-Agent: x\r\n\r\n", "gnutella", "gnutella-connect", Role.CLIENT),
    (b"GNUTELLA/0.6 200 OK\r\n", "gnutella", "gnutella-reply", Role.SERVER),
    (b"GIVE 1234:abcdef/file\n", "kazaa", "kazaa-give", Role.CLIENT),
    # What dash -i says first on a socket (seen in the live test's bind shell).
    (
        b"/bin/sh: 0: can't access tty; job control turned off\n# ",
        "shell",
        "shell-no-tty",
        Role.SERVER,
    ),
    (b"bash: no job control in this shell\n", "shell", "shell-no-tty", Role.SERVER),
]


@pytest.mark.parametrize(("payload", "service", "evidence", "role"), POSITIVES)
def test_positive(payload: bytes, service: str, evidence: str, role: Role) -> None:
    found = sig.match_stream(payload, payload[:64])
    assert [(m.service, m.evidence, m.role) for m in found] == [(service, evidence, role)]
    assert 0.0 < found[0].confidence <= 1.0


NEGATIVES = [
    # dns_tcp_8053.pcap: DNS over TCP is not in the list
    bytes.fromhex("0038db7201200001000000000001037777770774637064756d70036f726700"),
    # pptp.pcap
    bytes.fromhex("009c00011a2b3c4d00010000010000000000000100000001"),
    # zeek-ftp-retr.pcap: an FTP data connection (text file)
    b"The National Center for Supercomputing Applications\r\n",
    # zeek-ftp-ipv6.pcap: a directory listing on a data connection
    b"total 96172\r\nlrwxrwxr-x  1 root  wheel         3 Oct  5  2009 NetBSD -> pub\r\n",
    # irc-dcc-send.pcapng: a DCC CHAT line, a DCC SEND of a pcap file
    b"hello, are you there?\n",
    bytes.fromhex("d4c3b2a102000400000000000000000000ff0000010000"),
    # zeek-smtp.pcap: TLS application data seen midstream (no hello)
    bytes.fromhex("1703030050a9d8bf0710a7eb96999bb946f3feb0"),
    b"YMSG\x00\x10\x00\x00\x00\x15\x00\x8a\x00\x00\x00\x00",
    b"get / http/1.1\r\n",  # methods are case-sensitive
    b"GET",  # too short to judge
    b"SSH-3.0-x\r\n",
    b"220",
    b"\xff\xf1",  # IAC NOP only: no negotiation
    b"\x00\x00user\x00",  # empty field
    b"",
]


@pytest.mark.parametrize("payload", NEGATIVES)
def test_negative(payload: bytes) -> None:
    assert sig.match_stream(payload, payload[:64]) == []


def test_root_prompt_is_a_first_segment_signature() -> None:
    found = sig.match_stream(b"# ", b"# ")
    assert [(m.service, m.role) for m in found] == [("root-shell", Role.SERVER)]
    assert sig.root_shell(b"root@host:~# ") is not None
    assert sig.root_shell(b"# ls\n") is None
    # Only the first segment counts: a later prompt inside a stream is not it.
    assert sig.match_stream(b"login: root\r\n# ", b"login: root\r\n") == []


def test_unterminated_long_request_line_matches_weaker() -> None:
    line = b"GET /star-123456/index.m3u8?token=" + b"a" * 600
    m = sig.http_request(line[:512])
    assert m is not None and m.service == "http" and m.confidence < 0.9


def test_edonkey_needs_consistent_length() -> None:
    body = b"\x01\x10" + bytes(16) + b"\x00" * 10
    pkt = b"\xe3" + len(body).to_bytes(4, "little") + body
    assert sig.edonkey(pkt) is not None
    assert sig.edonkey(pkt + b"x") is None


def test_telnet_options_counts_votes() -> None:
    assert sig.telnet_options(b"\xff\xfb\x01\xff\xfb\x03") == (2, 1, 0)  # WILL ECHO: server
    assert sig.telnet_options(b"\xff\xfa\x18\x01\xff\xf0\xff\xfd\x18") == (1, 1, 0)
    assert sig.telnet_options(b"hello") == (0, 0, 0)


def test_line_stats_skip_telnet_commands() -> None:
    s = sig.line_stats(b"\xff\xfd\x18login: root\r\nPassword:\r\n\xff\xff")
    assert s.num_lines == 2
    assert s.num_normal_lines == 2
    assert s.num_7bit_ascii == len("login: root") + len("Password:")
    assert s.texty()
    assert not sig.line_stats(bytes(range(256))).texty()


def test_midstream_line_scan_finds_a_later_request() -> None:
    data = b"tail of a previous body\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n"
    assert sig.match_stream(data, data[:64]) == []
    found = sig.match_midstream(data)
    assert [(m.service, m.role) for m in found] == [("http", Role.CLIENT)]
    assert found[0].confidence < 0.95


def _record(kind: int, body: bytes, minor: int = 3) -> bytes:
    return bytes([kind, 3, minor]) + len(body).to_bytes(2, "big") + body


def test_midstream_tls_records() -> None:
    # TLS 1.3 seen after the hellos: change_cipher_spec, then encrypted records.
    data = _record(20, b"\x01") + _record(23, bytes(range(48))) + _record(23, b"\xaa" * 30)
    assert sig.match_stream(data, data[:64]) == []  # not a signature of a stream's start
    [m] = sig.match_midstream(data)
    assert (m.service, m.evidence, m.role) == ("tls", "tls-records", Role.EITHER)
    assert m.detail == "3 TLS 3.3 records: change_cipher_spec, application_data"
    # One record longer than the bytes kept: weaker.
    [one] = sig.match_midstream(_record(23, bytes(2000))[:512])
    assert one.confidence < m.confidence
    for bad in (
        _record(24, bytes(10)) + _record(23, bytes(10)),  # no such record type
        _record(23, bytes(10), minor=7) + _record(23, bytes(10)),  # no such version
        _record(23, b"") + _record(23, bytes(10)),  # empty record
        _record(23, bytes(10)) + b"\x17\x03",  # junk after the last record
        _record(23, bytes(10)),  # one whole record only: too little
        b"\x17\x03\x03\xff\xff" + bytes(100),  # longer than TLS allows
    ):
        assert sig.match_midstream(bad) == [], bad


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_signatures_never_raise(data: bytes) -> None:
    for m in sig.match_stream(data, data[:64]) + sig.match_midstream(data):
        assert 0.0 < m.confidence <= 1.0
        m.detail.encode("ascii")  # printable, always


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([p for p, *_ in POSITIVES] + NEGATIVES), st.binary(max_size=40))
def test_first_byte_dispatch_is_exact(known: bytes, noise: bytes) -> None:
    for data in (known, noise, known[:1] + noise, known + noise):
        assert sig.match_stream(data, data[:64]) == sig.match_all(data, data[:64])


_PREFILTERED = [
    (sig.http_request, sig._http_request_line),
    (sig.imap_command, sig._imap_command_line),
    (sig.shell_warning, sig._shell_warning_line),
]
_TEXTY = st.text(
    alphabet=st.sampled_from(list("aA1. :/\r\n\tHTPGEOSlgnic#ty'job control turned off")),
    max_size=120,
).map(str.encode)
_PREFIXES = [
    *(m + b" " for m in sig.HTTP_METHODS),
    b"a1 ",
    b"abcdefghijklmnop ",
    b"abcdefghijklmnopq ",
    b"x ",
    b"sh: can't access tty; job control turned off\n",
    b"bash: no job control in this shell\n",
    b" " * 64 + b"job control turned off\n",
    b" " * 64 + b"can't access tty\n",
    b" " * 65 + b"can't access tty\n",
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([p for p, *_ in POSITIVES] + NEGATIVES + _PREFIXES),
    st.one_of(_TEXTY, st.binary(max_size=60)),
)
def test_prefilters_are_exact(known: bytes, noise: bytes) -> None:
    """The cheap test in front of http-request, imap-command and shell-no-tty
    never rejects what the pattern alone would match."""
    cases = (known, noise, known + noise, known[:5] + noise, noise + known, known + b"\n")
    for data in cases:
        for fast, full in _PREFILTERED:
            assert fast(data) == full(data), (fast.__name__, data)


def test_every_signature_is_documented() -> None:
    names = [s.name for s in sig.SIGNATURES + sig.MIDSTREAM_SIGNATURES]
    assert len(names) == len(set(names))
    for s in sig.SIGNATURES + sig.MIDSTREAM_SIGNATURES:
        assert s.needs and s.test.__doc__


def test_operator_doc_lists_every_signature() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs/commands/backdoor.md").read_text()
    for s in sig.SIGNATURES + sig.MIDSTREAM_SIGNATURES:
        assert f"| `{s.name}` | {s.service} | {s.role.value} | {s.needs} |" in doc, s.name
