"""Payload signatures: which service a stream's first bytes belong to.

Every signature is a pure function of the first bytes one endpoint sent
(``data``, at most a few hundred bytes, starting at the beginning of that
direction's stream when the connection was seen from its start) and returns a
:class:`Match` or ``None``. A match says which service, what was seen (the
evidence), how sure it is (``confidence`` in 0..1) and which role the sender
plays: a server, a client, or either (protocols where both sides say the same
thing first, such as the SSH banner).

Signatures never look at port numbers: ports only decide, later, whether a
detected service is on its standard port (see ``bulk.analyzers.standard_ports``).

The table :data:`SIGNATURES` lists every signature with the evidence it needs;
``docs/commands/backdoor.md`` is generated from the same descriptions. The
classic set follows Zhang and Paxson, "Detecting Backdoors" (USENIX Security
2000) and Bro's backdoor analyzer; HTTP responses, the HTTP/2 preface, POP3,
IMAP, TLS, rsh, BitTorrent and the client-side checks are additions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from typing import NamedTuple


class Role(Enum):
    """Who sends a given payload in its protocol."""

    CLIENT = "client"
    SERVER = "server"
    EITHER = "either"  # both sides open with it (SSH banner, BitTorrent handshake)


class Match(NamedTuple):
    """One signature matched one direction's payload."""

    service: str  # "ssh", "http", ... (the names of standard_ports.conf)
    evidence: str  # the signature's name, e.g. "ssh-banner"
    role: Role  # the role of the endpoint that sent the payload
    confidence: float  # 0..1
    detail: str = ""  # a short printable excerpt of what matched


class Signature(NamedTuple):
    """A named payload test with its documentation."""

    name: str
    service: str
    role: Role
    needs: str  # the evidence it needs, in one sentence (documentation)
    test: Callable[[bytes], Match | None]
    first_segment: bool = False  # True: applied to the first data packet only
    first_bytes: bytes | None = None  # the stream's possible first bytes (None: any)


# ---------------------------------------------------------------- helpers

_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


_DOTS = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))


def excerpt(data: bytes, limit: int = 60) -> str:
    """The first line of ``data`` as printable ASCII, shortened to ``limit``."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    text = line[:limit].translate(_DOTS).decode("ascii")
    if len(line) > limit:
        text += "..."
    return text


def first_line(data: bytes, limit: int = 512) -> tuple[bytes, bool]:
    """The first line of ``data`` without its terminator, and whether one was seen."""
    end = data.find(b"\n", 0, limit)
    if end < 0:
        return data[:limit], False
    return data[:end].rstrip(b"\r"), True


def line_starts(data: bytes, max_lines: int = 32) -> list[int]:
    """Offsets where a line may begin: 0 and after every LF (bounded)."""
    starts = [0]
    pos = data.find(b"\n")
    while pos >= 0 and len(starts) < max_lines:
        if pos + 1 < len(data):
            starts.append(pos + 1)
        pos = data.find(b"\n", pos + 1)
    return starts


# ---------------------------------------------------------------- ssh

_SSH_BANNER = re.compile(rb"SSH-(1\.\d+|2\.0)-([\x21-\x2c\x2e-\x7e]+)([ \x20-\x7e]*)(\r?\n)?")


def ssh_banner(data: bytes) -> Match | None:
    """``SSH-<protoversion>-<softwareversion>`` (RFC 4253 4.2), sent by both sides."""
    m = _SSH_BANNER.match(data)
    if m is None:
        return None
    complete = m.group(4) is not None
    conf = 0.95 if complete else 0.8
    return Match("ssh", "ssh-banner", Role.EITHER, conf, excerpt(data))


# ---------------------------------------------------------------- http

HTTP_METHODS = (
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"TRACE",
    b"CONNECT",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
)
_METHOD_ALT = b"|".join(HTTP_METHODS)
# Methods are case-sensitive (RFC 9110 9.1); the version token is matched
# case-insensitively, as some servers and clients get it wrong.
_HTTP_REQUEST = re.compile(
    rb"(" + _METHOD_ALT + rb") ([\x21-\x7e]+)(?: ([Hh][Tt][Tt][Pp]/\d\.\d))?$"
)
_HTTP_REQUEST_PREFIX = re.compile(rb"(" + _METHOD_ALT + rb") [\x21-\x7e]+$")
_HTTP_RESPONSE = re.compile(
    rb"[Hh][Tt][Tt][Pp]/\d(?:\.\d)? [1-5]\d\d(?: [\x09\x20-\x7e\x80-\xff]*)?$"
)
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_ABSOLUTE_URI = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
_AUTHORITY = re.compile(rb"[A-Za-z0-9.-]+:\d{1,5}$|\[[0-9A-Fa-f:.]+\]:\d{1,5}$")


_METHODS = frozenset(HTTP_METHODS)
_METHOD_SPACE_MAX = max(map(len, HTTP_METHODS)) + 1


def http_request(data: bytes) -> Match | None:
    """A request line ``METHOD SP target SP HTTP/x.y`` (or HTTP/0.9 ``GET /path``).

    The proxy forms (an absolute URI as target, or CONNECT host:port) are
    reported as service ``http-proxy``. A line longer than the inspected
    window still matches on ``METHOD SP target`` with lower confidence.
    """
    # Both patterns begin 'METHOD SP' and a method has no space: the stream's
    # first space ends a method, or nothing matches (most streams: one find).
    sp = data.find(b" ", 0, _METHOD_SPACE_MAX)
    if sp < 0 or data[:sp] not in _METHODS:
        return None
    return _http_request_line(data)


def _http_request_line(data: bytes) -> Match | None:
    """:func:`http_request` without the method test in front (the reference)."""
    line, complete = first_line(data)
    if not complete:
        m = _HTTP_REQUEST_PREFIX.match(line)
        if m is None or len(line) < 64:
            return None  # too short to judge an unterminated line
        return _http_request_match(m.group(1), line.split(b" ", 2)[1], 0.6, data)
    m = _HTTP_REQUEST.match(line)
    if m is None:
        return None
    method, target, version = m.group(1), m.group(2), m.group(3)
    if version is None:
        # HTTP/0.9: only GET, only a path.
        if method != b"GET" or not target.startswith(b"/"):
            return None
        return _http_request_match(method, target, 0.7, data)
    return _http_request_match(method, target, 0.95, data)


def _http_request_match(method: bytes, target: bytes, conf: float, data: bytes) -> Match:
    if _ABSOLUTE_URI.match(target) or (method == b"CONNECT" and _AUTHORITY.match(target)):
        return Match("http-proxy", "http-proxy-request", Role.CLIENT, conf, excerpt(data))
    return Match("http", "http-request", Role.CLIENT, conf, excerpt(data))


def http_response(data: bytes) -> Match | None:
    """A status line ``HTTP/x.y NNN reason`` (version token in any letter case)."""
    line, complete = first_line(data)
    if not complete or _HTTP_RESPONSE.match(line) is None:
        return None
    return Match("http", "http-response", Role.SERVER, 0.95, excerpt(data))


def http2_preface(data: bytes) -> Match | None:
    """The HTTP/2 client connection preface in clear text (h2c, prior knowledge)."""
    if data.startswith(_HTTP2_PREFACE):
        return Match("http", "http2-preface", Role.CLIENT, 0.95, "PRI * HTTP/2.0")
    return None


# ---------------------------------------------------------------- ftp, smtp, pop3, imap

_REPLY_220 = re.compile(rb"(220|421)[ -]([\x09\x20-\x7e]*)$")
_SMTP_WORDS = re.compile(rb"\b(E?SMTP|[Pp]ostfix|Exim|[Ss]endmail|[Mm]ail ?[Ss]erver|MTA)\b")
_FTP_WORDS = re.compile(rb"\b(FTP|[Ff]tp|FTPD|[Ff]tpd|FileZilla|ProFTPD|vsFTPd|Pure-FTPd)")


def ftp_smtp_banner(data: bytes) -> Match | None:
    """A ``220`` (or ``421``) greeting: FTP and SMTP servers both open with it.

    The words in the greeting decide: ``SMTP``/``ESMTP``/MTA names give smtp,
    ``FTP`` gives ftp; a bare greeting is ftp with low confidence (Bro's
    ftp-sig), and the client's first command usually settles it.
    """
    line, complete = first_line(data)
    if not complete:
        return None
    m = _REPLY_220.match(line)
    if m is None:
        return None
    text = m.group(2)
    if _SMTP_WORDS.search(text):
        return Match("smtp", "smtp-banner", Role.SERVER, 0.9, excerpt(data))
    if _FTP_WORDS.search(text):
        return Match("ftp", "ftp-banner", Role.SERVER, 0.9, excerpt(data))
    return Match("ftp", "220-banner", Role.SERVER, 0.5, excerpt(data))


_FTP_CLIENT = re.compile(
    rb"(USER [\x21-\x7e]+|AUTH (TLS|SSL|TLS-C|TLS-P)|FEAT|SYST|OPTS UTF8 ON|PASV|EPSV"
    rb"|CLNT [\x20-\x7e]+|PWD|TYPE [AI])\r?$"
)
_FTP_SPECIFIC = re.compile(rb"(AUTH (TLS|SSL|TLS-C|TLS-P)|FEAT|SYST|OPTS UTF8 ON|PASV|EPSV|CLNT)")


def ftp_command(data: bytes) -> Match | None:
    """A client's first FTP command: USER, AUTH TLS, FEAT, SYST, PASV, ...

    ``USER name`` alone is shared with POP3, hence its lower confidence.
    """
    line, complete = first_line(data)
    if not complete or _FTP_CLIENT.match(line) is None:
        return None
    conf = 0.8 if _FTP_SPECIFIC.match(line) else 0.5
    return Match("ftp", "ftp-command", Role.CLIENT, conf, excerpt(data))


_SMTP_CLIENT = re.compile(rb"(EHLO|HELO|ehlo|helo) [\x21-\x7e]+ ?$")


def smtp_command(data: bytes) -> Match | None:
    """A client's ``EHLO host`` or ``HELO host`` (RFC 5321 4.1.1.1)."""
    line, complete = first_line(data)
    if not complete or _SMTP_CLIENT.match(line) is None:
        return None
    return Match("smtp", "smtp-helo", Role.CLIENT, 0.9, excerpt(data))


_POP3_GREETING = re.compile(rb"\+OK(?: [\x09\x20-\x7e]*)?$")
_POP3_CLIENT = re.compile(
    rb"(CAPA|STLS|APOP [\x21-\x7e]+ [0-9a-fA-F]{32}|AUTH (?!TLS|SSL)[A-Z0-9-]+)$"
)


def pop3_greeting(data: bytes) -> Match | None:
    """A server's ``+OK ...`` greeting (RFC 1939 4)."""
    line, complete = first_line(data)
    if not complete or _POP3_GREETING.match(line) is None:
        return None
    return Match("pop3", "pop3-greeting", Role.SERVER, 0.9, excerpt(data))


def pop3_command(data: bytes) -> Match | None:
    """A client's first POP3-only command: CAPA, STLS, APOP, AUTH."""
    line, complete = first_line(data)
    if not complete or _POP3_CLIENT.match(line) is None:
        return None
    return Match("pop3", "pop3-command", Role.CLIENT, 0.7, excerpt(data))


_IMAP_GREETING = re.compile(rb"\* (OK|PREAUTH|BYE)[ \[][\x09\x20-\x7e]*$")
_IMAP_CLIENT = re.compile(
    rb"[A-Za-z0-9.]{1,16} (CAPABILITY|LOGIN [\x21-\x7e]+ [\x21-\x7e]+|STARTTLS"
    rb"|AUTHENTICATE [A-Z0-9-]+|ID [(N][\x20-\x7e]*|NOOP)$",
    re.IGNORECASE,
)


def imap_greeting(data: bytes) -> Match | None:
    """A server's untagged ``* OK``, ``* PREAUTH`` or ``* BYE`` greeting (RFC 9051 7.1)."""
    line, complete = first_line(data)
    if not complete or _IMAP_GREETING.match(line) is None:
        return None
    return Match("imap", "imap-greeting", Role.SERVER, 0.9, excerpt(data))


_IMAP_COMMAND_FIRST = frozenset(b"CLSAINclsain")  # CAPABILITY, LOGIN, STARTTLS, ...


def imap_command(data: bytes) -> Match | None:
    """A client's tagged first command: ``a1 CAPABILITY``, ``a1 LOGIN u p``, ..."""
    # A tag has no space: the first space ends it (1..16 characters) and the
    # command's first letter follows, or nothing matches.
    sp = data.find(b" ", 0, 17)
    if sp < 1 or sp + 1 >= len(data) or data[sp + 1] not in _IMAP_COMMAND_FIRST:
        return None
    return _imap_command_line(data)


def _imap_command_line(data: bytes) -> Match | None:
    """:func:`imap_command` without the tag test in front (the reference)."""
    line, complete = first_line(data)
    if not complete or _IMAP_CLIENT.match(line) is None:
        return None
    return Match("imap", "imap-command", Role.CLIENT, 0.8, excerpt(data))


# ---------------------------------------------------------------- irc

# Bro's irc-sig list of client commands, plus the registration commands.
_IRC_STRONG = re.compile(
    rb"(NICK [\x21-\x7e]+|USER [\x21-\x7e]+ [\x21-\x7e]+ [\x21-\x7e]+ :?[\x20-\x7e]*"
    rb"|CAP (LS|REQ|END)\b[\x20-\x7e]*)$"
)
_IRC_WEAK = re.compile(
    rb"(PASS|ERROR|INVITE|ISON|JOIN|KICK|NJOIN|NOTICE AUTH|OPER|PART|PING|PONG|PRIVMSG"
    rb"|SQUERY|SQUIT|WHO)( [\x20-\x7e]*)?$"
)
_IRC_SERVER = re.compile(
    rb"(:[\x21-\x7e]+ (NOTICE|PING|\d{3}) [\x20-\x7e]*"
    rb"|NOTICE AUTH :[\x20-\x7e]*|PING :[\x21-\x7e]+)$"
)


def irc_client(data: bytes) -> Match | None:
    """A client's registration (``NICK x``, ``USER u m * :real``, ``CAP LS``)
    or one of Bro's irc-sig commands (JOIN, PRIVMSG, ...; weaker)."""
    line, complete = first_line(data)
    if not complete:
        return None
    if _IRC_STRONG.match(line):
        return Match("irc", "irc-register", Role.CLIENT, 0.85, excerpt(data))
    if _IRC_WEAK.match(line):
        return Match("irc", "irc-command", Role.CLIENT, 0.5, excerpt(data))
    return None


def irc_server(data: bytes) -> Match | None:
    """A server line ``:server NOTICE|PING|<3 digits> ...`` or ``NOTICE AUTH :...``."""
    line, complete = first_line(data)
    if not complete or _IRC_SERVER.match(line) is None:
        return None
    return Match("irc", "irc-server", Role.SERVER, 0.9, excerpt(data))


# ---------------------------------------------------------------- telnet

IAC = 0xFF
_WILL, _WONT, _DO, _DONT, _SB, _SE = 251, 252, 253, 254, 250, 240
# Options a terminal (client) offers and a server asks for: TTYPE, NAWS,
# TSPEED, LFLOW, LINEMODE, XDISPLOC, ENVIRON, NEW-ENVIRON.
_TERMINAL_OPTIONS = frozenset({24, 31, 32, 33, 34, 35, 36, 39})
_ECHO = 1


def telnet_options(data: bytes) -> tuple[int, int, int]:
    """Parse the leading run of telnet commands: (triplets, server votes, client votes).

    Stops at the first byte that is not part of an ``IAC WILL/WONT/DO/DONT
    opt`` triplet or an ``IAC SB ... IAC SE`` subnegotiation.
    """
    i = 0
    n = len(data)
    triplets = server = client = 0
    while i + 2 < n and data[i] == IAC:
        cmd, opt = data[i + 1], data[i + 2]
        if _WILL <= cmd <= _DONT:
            triplets += 1
            if opt in _TERMINAL_OPTIONS:
                if cmd == _DO:
                    server += 1
                elif cmd == _WILL:
                    client += 1
            elif opt == _ECHO:
                if cmd == _WILL:
                    server += 1
                elif cmd == _DO:
                    client += 1
            i += 3
        elif cmd == _SB:
            end = data.find(bytes((IAC, _SE)), i + 2)
            if end < 0 or end - i > 64:
                break
            i = end + 2
        else:
            break
    return triplets, server, client


def telnet_negotiation(data: bytes) -> Match | None:
    """The stream opens with telnet option negotiation ``IAC WILL|WONT|DO|DONT opt``.

    Who asks for terminal options (``DO TTYPE``, ``WILL ECHO``) is the server;
    who offers them (``WILL TTYPE``, ``DO ECHO``) is the client.
    """
    triplets, server, client = telnet_options(data)
    if triplets == 0:
        return None
    role = Role.EITHER
    if server > client:
        role = Role.SERVER
    elif client > server:
        role = Role.CLIENT
    conf = 0.9 if triplets >= 2 else 0.6
    return Match("telnet", "telnet-iac", role, conf, f"{triplets} option negotiations")


class LineStats(NamedTuple):
    """Bro's telnet line statistics over some bytes (IAC sequences skipped)."""

    num_bytes: int
    num_7bit_ascii: int
    num_lines: int
    num_normal_lines: int  # lines of at most 80 characters

    def texty(self) -> bool:
        """Bro's telnet-sig test: >= 10 bytes, >= 75% 7-bit ASCII, >= 2 lines,
        at least half of them of normal length."""
        return (
            self.num_bytes >= 10
            and self.num_7bit_ascii >= 0.75 * self.num_bytes
            and self.num_lines >= 2
            and self.num_normal_lines >= 0.5 * self.num_lines
        )


NORMAL_LINE_LENGTH = 80


def line_stats(data: bytes) -> LineStats:
    """Count bytes, 7-bit ASCII bytes, lines and normal-length lines; CRLF is one
    terminator and telnet commands do not count."""
    num_bytes = ascii7 = lines = normal = 0
    last = 0
    line_len = 0
    i = 0
    n = len(data)
    while i < n:
        c = data[i]
        if c == IAC and i + 1 < n:
            cmd = data[i + 1]
            if cmd == IAC:  # escaped 0xff data byte
                num_bytes += 1
                line_len += 1
                last = c
                i += 2
                continue
            i += 3 if _WILL <= cmd <= _DONT else 2
            continue
        i += 1
        if c == 0x0A and last == 0x0D:
            last = c
            continue
        num_bytes += 1
        if c in (0x0A, 0x0D):
            lines += 1
            if line_len <= NORMAL_LINE_LENGTH:
                normal += 1
            line_len = 0
        else:
            line_len += 1
            if 0 < c < 0x80:
                ascii7 += 1
        last = c
    return LineStats(num_bytes, ascii7, lines, normal)


# ---------------------------------------------------------------- r-commands

_RLOGIN = re.compile(
    rb"\x00([\x21-\x7e]{1,64})\x00([\x21-\x7e]{1,64})\x00([A-Za-z0-9._+-]{1,64})/(\d{1,7})\x00"
)
_RSH = re.compile(
    rb"(\d{0,5})\x00([\x21-\x7e]{1,64})\x00([\x20-\x7e]{1,64})\x00([\x09\x20-\x7e]{1,2048})\x00"
)


def rlogin_client(data: bytes) -> Match | None:
    """rlogin's opening ``\\0locuser\\0remuser\\0terminal/speed\\0`` (RFC 1282)."""
    m = _RLOGIN.match(data)
    if m is None:
        return None
    local, remote, term, speed = (g.decode() for g in m.groups())
    detail = f"{local} -> {remote} {term}/{speed}"
    return Match("rlogin", "rlogin-handshake", Role.CLIENT, 0.95, detail)


def rsh_client(data: bytes) -> Match | None:
    """rsh/rexec's opening ``[stderr-port]\\0user\\0user-or-password\\0command\\0``."""
    if _RLOGIN.match(data):
        return None
    m = _RSH.match(data)
    if m is None:
        return None
    detail = f"user {m.group(2).decode()!r} command {excerpt(m.group(4), 40)!r}"
    return Match("rsh", "rsh-handshake", Role.CLIENT, 0.9, detail)


# ---------------------------------------------------------------- root shell

_ROOT_PROMPT = re.compile(rb"[\x20-\x7e]{0,64}# $")


def root_shell(data: bytes) -> Match | None:
    """The responder's first packet is exactly ``# `` (the classic root backdoor),
    or a short root prompt such as ``sh-5.2# `` or ``root@host:~# ``."""
    if data == b"# ":
        return Match("root-shell", "root-prompt", Role.SERVER, 0.8, "# ")
    if data.endswith(b"# ") and _ROOT_PROMPT.fullmatch(data) and b"\n" not in data:
        return Match("root-shell", "root-prompt", Role.SERVER, 0.6, excerpt(data))
    return None


_SHELL_WARNING = re.compile(
    rb"[\x20-\x7e]{0,64}(can't access tty|no job control|job control turned off)"
)


def shell_warning(data: bytes) -> Match | None:
    """The responder opens with the warning an interactive shell prints when its
    input is a socket, not a terminal (dash: "can't access tty; job control
    turned off", bash: "no job control in this shell"): a bind shell."""
    # A phrase starts within the first 65 characters: 'tty' ends by offset 80,
    # 'job control' by 78. Neither there: the pattern cannot match.
    if data.find(b"tty", 0, _SHELL_PHRASES_END) < 0 and (
        data.find(b"job control", 0, _SHELL_PHRASES_END) < 0
    ):
        return None
    return _shell_warning_line(data)


_SHELL_PHRASES_END = 96


def _shell_warning_line(data: bytes) -> Match | None:
    """:func:`shell_warning` without the phrase test in front (the reference)."""
    line, _ = first_line(data, 160)
    if _SHELL_WARNING.match(line):
        return Match("shell", "shell-no-tty", Role.SERVER, 0.8, excerpt(data))
    return None


# ---------------------------------------------------------------- tls


def _tls_hello(data: bytes, hs_type: int) -> bool:
    if len(data) < 11 or data[0] != 0x16 or data[1] != 3 or data[2] > 4:
        return False
    rec_len = (data[3] << 8) | data[4]
    if rec_len < 4 or rec_len > 16384 + 2048 or data[5] != hs_type:
        return False
    hs_len = (data[6] << 16) | (data[7] << 8) | data[8]
    return hs_len >= 34 and data[9] == 3 and data[10] <= 4


def tls_client_hello(data: bytes) -> Match | None:
    """A TLS record of type handshake (22) holding a ClientHello (1), or an
    SSLv2-format ClientHello as sent by old clients."""
    if _tls_hello(data, 1):
        return Match("tls", "tls-client-hello", Role.CLIENT, 0.9, f"TLS record 3.{data[2]}")
    if (
        len(data) >= 5
        and data[0] & 0x80
        and data[2] == 1
        and data[3] in (0, 3)
        and data[4] <= 4
        and ((data[0] & 0x7F) << 8 | data[1]) >= 9
    ):
        return Match("tls", "sslv2-client-hello", Role.CLIENT, 0.7, "SSLv2 hello")
    return None


def tls_server_hello(data: bytes) -> Match | None:
    """A TLS handshake record holding a ServerHello (2)."""
    if _tls_hello(data, 2):
        return Match("tls", "tls-server-hello", Role.SERVER, 0.9, f"TLS record 3.{data[2]}")
    return None


_TLS_RECORD_NAMES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}
_TLS_MAX_RECORD = 16384 + 2048  # TLSCiphertext.length limit (RFC 5246 6.2.3)


def tls_records(data: bytes) -> Match | None:
    """Midstream TLS: the bytes are TLS records back to back from the first
    byte (type 20-23, version 3.1-3.4, a non-zero length within the
    ciphertext limit), at least two record headers, or one whose record runs
    past the bytes kept. Both sides send records: the role is not known."""
    n = len(data)
    pos = 0
    count = 0
    kinds: list[str] = []
    while pos + 5 <= n:
        kind = _TLS_RECORD_NAMES.get(data[pos])
        length = (data[pos + 3] << 8) | data[pos + 4]
        if kind is None or data[pos + 1] != 3 or not 1 <= data[pos + 2] <= 4:
            return None
        if length == 0 or length > _TLS_MAX_RECORD:
            return None
        count += 1
        if kind not in kinds:
            kinds.append(kind)
        pos += 5 + length
    if count == 0 or (count == 1 and pos <= n):
        return None
    if pos < n:  # bytes left that cannot hold a record header
        return None
    conf = 0.6 if count >= 2 else 0.45
    return Match(
        "tls",
        "tls-records",
        Role.EITHER,
        conf,
        f"{count} TLS 3.{data[2]} record{'s' if count > 1 else ''}: {', '.join(kinds)}",
    )


# ---------------------------------------------------------------- peer-to-peer


def bittorrent(data: bytes) -> Match | None:
    """The BitTorrent peer handshake ``\\x13BitTorrent protocol`` (BEP 3), both sides."""
    if data.startswith(b"\x13BitTorrent protocol"):
        return Match("bittorrent", "bittorrent-handshake", Role.EITHER, 0.95, "BitTorrent protocol")
    return None


def gnutella(data: bytes) -> Match | None:
    """Gnutella's ``GNUTELLA CONNECT/x.y`` (client) and ``GNUTELLA/x.y 200`` or
    ``GNUTELLA OK`` (server)."""
    if data.startswith(b"GNUTELLA CONNECT/"):
        return Match("gnutella", "gnutella-connect", Role.CLIENT, 0.95, excerpt(data))
    if re.match(rb"GNUTELLA(/\d\.\d \d{3}| OK)", data):
        return Match("gnutella", "gnutella-reply", Role.SERVER, 0.95, excerpt(data))
    return None


def kazaa(data: bytes) -> Match | None:
    """Some KaZaA (FastTrack) transfers open with ``GIVE `` (Bro's kazaa-sig)."""
    if data.startswith(b"GIVE ") and len(data) > 5:
        return Match("kazaa", "kazaa-give", Role.CLIENT, 0.6, excerpt(data))
    return None


def edonkey(data: bytes) -> Match | None:
    """An eDonkey/eMule first packet: marker 0xe3/0xc5, a little-endian length
    equal to the rest of the packet, and a Hello (0x01) opcode."""
    if len(data) < 6 or data[0] not in (0xE3, 0xC5):
        return None
    length = int.from_bytes(data[1:5], "little")
    if length != len(data) - 5 or data[5] != 0x01 or length < 17:
        return None
    return Match("edonkey", "edonkey-hello", Role.EITHER, 0.6, "eDonkey hello")


# ---------------------------------------------------------------- the table

_ALNUM = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz."
_TLS_CLIENT_FIRST = b"\x16" + bytes(range(0x80, 0x100))  # record, or SSLv2 length
_PRINTABLE_FIRST = bytes(range(0x20, 0x7F))  # text that starts printable (prompts, warnings)

SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "ssh-banner",
        "ssh",
        Role.EITHER,
        "the stream opens with 'SSH-1.x-' or 'SSH-2.0-' and a software version",
        ssh_banner,
        first_bytes=b"S",
    ),
    Signature(
        "http-request",
        "http",
        Role.CLIENT,
        "the first line is 'METHOD SP target SP HTTP/x.y' (case-sensitive method), "
        "or HTTP/0.9 'GET /path'; an absolute-URI target or CONNECT host:port "
        "gives http-proxy",
        http_request,
        first_bytes=b"GHPDOTCMLURS",
    ),
    Signature(
        "http-response",
        "http",
        Role.SERVER,
        "the first line is 'HTTP/x.y NNN reason', HTTP in any letter case",
        http_response,
        first_bytes=b"Hh",
    ),
    Signature(
        "http2-preface",
        "http",
        Role.CLIENT,
        "the HTTP/2 clear-text connection preface 'PRI * HTTP/2.0'",
        http2_preface,
        first_bytes=b"P",
    ),
    Signature(
        "ftp-smtp-banner",
        "ftp",
        Role.SERVER,
        "the server's first line is '220 ' or '220-' (or '421'); SMTP words make it "
        "smtp, FTP words ftp, otherwise ftp with low confidence",
        ftp_smtp_banner,
        first_bytes=b"24",
    ),
    Signature(
        "ftp-command",
        "ftp",
        Role.CLIENT,
        "the client's first line is an FTP command (USER, AUTH TLS, FEAT, SYST, PASV, EPSV, ...)",
        ftp_command,
        first_bytes=b"UAFSOPECT",
    ),
    Signature(
        "smtp-helo",
        "smtp",
        Role.CLIENT,
        "the client's first line is 'EHLO host' or 'HELO host'",
        smtp_command,
        first_bytes=b"EHeh",
    ),
    Signature(
        "pop3-greeting",
        "pop3",
        Role.SERVER,
        "the server's first line is '+OK ...'",
        pop3_greeting,
        first_bytes=b"+",
    ),
    Signature(
        "pop3-command",
        "pop3",
        Role.CLIENT,
        "the client's first line is CAPA, STLS, APOP or AUTH",
        pop3_command,
        first_bytes=b"CSA",
    ),
    Signature(
        "imap-greeting",
        "imap",
        Role.SERVER,
        "the server's first line is '* OK', '* PREAUTH' or '* BYE'",
        imap_greeting,
        first_bytes=b"*",
    ),
    Signature(
        "imap-command",
        "imap",
        Role.CLIENT,
        "the client's first line is a tagged CAPABILITY, LOGIN, STARTTLS, AUTHENTICATE, ID or NOOP",
        imap_command,
        first_bytes=_ALNUM,
    ),
    Signature(
        "irc-client",
        "irc",
        Role.CLIENT,
        "the client's first line is NICK, USER (4 parameters) or CAP LS/REQ; "
        "weaker: one of JOIN, PRIVMSG, PING, ... (Bro's irc-sig list)",
        irc_client,
        first_bytes=b"NUCPEIJKOSW",
    ),
    Signature(
        "irc-server",
        "irc",
        Role.SERVER,
        "the server's first line is ':name NOTICE|PING|NNN ...' or 'NOTICE AUTH :'",
        irc_server,
        first_bytes=b":NP",
    ),
    Signature(
        "telnet-iac",
        "telnet",
        Role.EITHER,
        "the stream opens with telnet option negotiation IAC WILL/WONT/DO/DONT; "
        "asking for terminal options marks the server; line statistics "
        "(7-bit ASCII, short lines) raise the confidence",
        telnet_negotiation,
        first_bytes=b"\xff",
    ),
    Signature(
        "rlogin-handshake",
        "rlogin",
        Role.CLIENT,
        "the client opens with '\\0user\\0user\\0terminal/speed\\0'",
        rlogin_client,
        first_bytes=b"\x00",
    ),
    Signature(
        "rsh-handshake",
        "rsh",
        Role.CLIENT,
        "the client opens with '[port]\\0user\\0user\\0command\\0' (rsh, rexec)",
        rsh_client,
        first_bytes=b"\x000123456789",
    ),
    Signature(
        "root-prompt",
        "root-shell",
        Role.SERVER,
        "the responder's first data packet is exactly '# ' (or a short root prompt "
        "ending in '# ') before the client sent anything",
        root_shell,
        first_segment=True,
        first_bytes=_PRINTABLE_FIRST,
    ),
    Signature(
        "shell-no-tty",
        "shell",
        Role.SERVER,
        "the responder opens with a shell's no-terminal warning (\"can't access "
        'tty", "no job control in this shell"): a bind shell',
        shell_warning,
        first_bytes=_PRINTABLE_FIRST,
    ),
    Signature(
        "tls-client-hello",
        "tls",
        Role.CLIENT,
        "a TLS handshake record (22, version 3.x) holding a ClientHello, or an SSLv2 ClientHello",
        tls_client_hello,
        first_bytes=_TLS_CLIENT_FIRST,
    ),
    Signature(
        "tls-server-hello",
        "tls",
        Role.SERVER,
        "a TLS handshake record holding a ServerHello",
        tls_server_hello,
        first_bytes=b"\x16",
    ),
    Signature(
        "bittorrent-handshake",
        "bittorrent",
        Role.EITHER,
        "the stream opens with '\\x13BitTorrent protocol'",
        bittorrent,
        first_bytes=b"\x13",
    ),
    Signature(
        "gnutella",
        "gnutella",
        Role.EITHER,
        "'GNUTELLA CONNECT/' from the client, 'GNUTELLA/0.6 200' or 'GNUTELLA OK' from the server",
        gnutella,
        first_bytes=b"G",
    ),
    Signature(
        "kazaa-give",
        "kazaa",
        Role.CLIENT,
        "the client opens with 'GIVE ' (some FastTrack transfers)",
        kazaa,
        first_bytes=b"G",
    ),
    Signature(
        "edonkey-hello",
        "edonkey",
        Role.EITHER,
        "the first packet is an eDonkey Hello: 0xe3/0xc5, length, opcode 0x01",
        edonkey,
        first_segment=True,
        first_bytes=b"\xe3\xc5",
    ),
)

# Signatures that describe text lines, tried at every line start of a stream
# whose beginning was not seen (midstream), at reduced confidence.
LINE_SIGNATURES: tuple[Callable[[bytes], Match | None], ...] = (
    http_request,
    http_response,
    ftp_smtp_banner,
    smtp_command,
    irc_client,
    irc_server,
    ssh_banner,
    gnutella,
)


# Signatures for streams whose beginning was not seen (midstream), tried on
# the first bytes kept when no signature above matched them.
MIDSTREAM_SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "tls-records",
        "tls",
        Role.EITHER,
        "(midstream only) the bytes are TLS records back to back: type 20-23, "
        "version 3.1-3.4, plausible lengths, at least two record headers (or one "
        "record longer than the bytes kept); client and server are guessed",
        tls_records,
        first_bytes=b"\x14\x15\x16\x17",
    ),
)


def _by_first_byte() -> tuple[tuple[Signature, ...], ...]:
    return tuple(
        tuple(s for s in SIGNATURES if s.first_bytes is None or b in s.first_bytes)
        for b in range(256)
    )


_BY_FIRST = _by_first_byte()


def match_stream(data: bytes, first_segment: bytes) -> list[Match]:
    """Every signature that matches the start of one direction's stream.

    Only the signatures whose possible first bytes include the stream's first
    byte are run (the same result as running all, see :func:`match_all`).
    """
    if not data:
        return []
    found: list[Match] = []
    for sig in _BY_FIRST[data[0]]:
        m = sig.test(first_segment if sig.first_segment else data)
        if m is not None:
            found.append(m)
    return found


def match_all(data: bytes, first_segment: bytes) -> list[Match]:
    """:func:`match_stream` without the first-byte dispatch (the reference)."""
    found: list[Match] = []
    for sig in SIGNATURES:
        m = sig.test(first_segment if sig.first_segment else data)
        if m is not None:
            found.append(m)
    return found


def match_midstream(data: bytes, penalty: float = 0.7) -> list[Match]:
    """For streams whose beginning was missed: the midstream signatures on the
    first bytes (TLS records), else the text signatures at each line start
    after the first, their confidence scaled by ``penalty``."""
    found: list[Match] = []
    if data:
        for sig in MIDSTREAM_SIGNATURES:
            if sig.first_bytes is None or data[0] in sig.first_bytes:
                m = sig.test(data)
                if m is not None:
                    found.append(m)
        if found:
            return found
    for start in line_starts(data)[1:]:
        chunk = data[start:]
        for test in LINE_SIGNATURES:
            m = test(chunk)
            if m is not None:
                found.append(
                    Match(m.service, m.evidence, m.role, round(m.confidence * penalty, 2), m.detail)
                )
        if found:
            break
    return found
