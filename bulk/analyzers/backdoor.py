"""Backdoor analysis: the service of each TCP connection, from its payload.

Per connection we keep the first ``inspect_bytes`` of each direction's
reassembled stream and Zhang-Paxson keystroke statistics over the first
``max_data_packets`` data deliveries of each direction. As soon as the
evidence is decisive (a server-side signature, or a client-side signature
plus the server's first bytes), the connection is classified and the
analyzer tells the flow table it is done with it, so the rest of a long
connection costs nothing.

Roles come from the payload first: whoever sends ``HTTP/1.1 200`` is the
server, whatever the handshake or the ports say. Only for symmetric openings
(the SSH banner, the BitTorrent handshake) does the handshake decide, and
without one, the flow table's orientation (``roles = "guess"``).

Server-side evidence outranks client-side evidence: a backdoor is a server,
so a client that speaks HTTP to an SSH server (get-to-ssh-server.pcap) is a
connection to SSH, noted in the evidence.

:class:`BackdoorFlow` is independent of the flow table (it takes
``data``/``gap`` calls and returns a :class:`Finding`); :class:`BackdoorAnalyzer`
is the flow-table plugin that wires it to the table's hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_str
from typing import TYPE_CHECKING, Any, NamedTuple

from bulk.analyzers.interactive import EndpointStats, interactive_verdict, ssh_lengths
from bulk.analyzers.signatures import (
    Match,
    Role,
    line_stats,
    match_midstream,
    match_stream,
)
from bulk.analyzers.standard_ports import StandardPorts
from bulk.flow.analyzer import DONE, ORIG, Analyzer
from bulk.slotted import Frozen

try:  # hashlib would load OpenSSL's _hashlib too (2-5 ms of start-up) for BLAKE2 alone
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import blake2b

if TYPE_CHECKING:
    from bulk.flow.table import Flow


MATCH_TRIES = 3  # signature passes per direction while data arrives


class BackdoorConfig(Frozen):
    """How much of each connection is inspected, and what counts as standard
    (immutable; a plain class: ``dataclasses`` costs about 7 ms of start-up).

    ``standard`` defaults to :meth:`StandardPorts.default`; ``inspect_bytes``:
    per direction, from the stream's start; ``max_data_packets``: data
    deliveries per direction, then decide (the cut-off); ``report_standard``
    (--all): also services on their standard ports."""

    __slots__ = (
        "inspect_bytes",
        "max_data_packets",
        "report_interactive",
        "report_standard",
        "standard",
    )
    standard: StandardPorts
    inspect_bytes: int
    max_data_packets: int
    report_standard: bool
    report_interactive: bool

    def __init__(
        self,
        standard: StandardPorts | None = None,
        inspect_bytes: int = 512,
        max_data_packets: int = 32,
        report_standard: bool = False,
        report_interactive: bool = True,
    ) -> None:
        init = object.__setattr__
        init(self, "standard", StandardPorts.default() if standard is None else standard)
        init(self, "inspect_bytes", inspect_bytes)
        init(self, "max_data_packets", max_data_packets)
        init(self, "report_standard", report_standard)
        init(self, "report_interactive", report_interactive)


class Endpoint(NamedTuple):
    host: str
    port: int


class Finding(NamedTuple):
    """One classified connection, with client and server as the payload says.

    (NamedTuples here and for matches: built per connection, and much cheaper
    to build than frozen dataclasses.)"""

    ts_ns: int  # first packet of the connection
    uid: str
    client: Endpoint
    server: Endpoint
    proto: str
    service: str
    evidence: str
    confidence: float
    standard: bool  # the server port is a standard port of ``service``
    roles: str  # "payload", "handshake" or "guess": how client/server were decided
    midstream: bool  # the connection's start was not seen

    def to_json(self) -> dict[str, Any]:
        """Zeek-like field names (conn.log style), one JSON object per finding."""
        return {
            "ts": round(self.ts_ns / 1e9, 6),
            "uid": self.uid,
            "orig_h": self.client.host,
            "orig_p": self.client.port,
            "resp_h": self.server.host,
            "resp_p": self.server.port,
            "proto": self.proto,
            "service": self.service,
            "evidence": self.evidence,
            "confidence": self.confidence,
            "standard_port": self.standard,
            "roles": self.roles,
            "midstream": self.midstream,
        }

    def json_line(self) -> str:
        """``json.dumps(self.to_json()) + "\\n"``, byte for byte, written out
        directly (a third of the time: ``--json`` prints one per finding)."""
        q = _json_str
        c, s = self.client, self.server
        return (
            f'{{"ts": {round(self.ts_ns / 1e9, 6)!r}, "uid": {q(self.uid)}, '
            f'"orig_h": {q(c.host)}, "orig_p": {c.port!r}, '
            f'"resp_h": {q(s.host)}, "resp_p": {s.port!r}, "proto": {q(self.proto)}, '
            f'"service": {q(self.service)}, "evidence": {q(self.evidence)}, '
            f'"confidence": {self.confidence!r}, '
            f'"standard_port": {"true" if self.standard else "false"}, '
            f'"roles": {q(self.roles)}, "midstream": {"true" if self.midstream else "false"}}}\n'
        )


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def make_uid(ts_ns: int, a: Endpoint, b: Endpoint, proto: str) -> str:
    """A Zeek-looking connection id, deterministic for the same connection."""
    key = f"{ts_ns}|{proto}|{a.host}|{a.port}|{b.host}|{b.port}".encode()
    digest = int.from_bytes(blake2b(key, digest_size=8).digest(), "big")
    chars = []
    for _ in range(11):
        digest, r = divmod(digest, 62)
        chars.append(_B62[r])
    return "C" + "".join(chars)


class _Direction:
    """One direction of one connection: the first bytes, the first packet, stats."""

    __slots__ = ("buf", "closed", "first_segment", "first_ts", "matches", "stats", "tries")

    def __init__(self) -> None:
        self.tries = 0  # signature passes run so far
        self.buf = bytearray()
        self.first_segment: bytes | None = None
        self.first_ts = 0
        self.closed = False  # a gap (or the window) ended the inspected prefix
        self.matches: list[Match] = []
        self.stats = EndpointStats()


# What a decided flow keeps instead of its buffers (never written to).
_RELEASED = (_Direction(), _Direction())


class _Decision(NamedTuple):
    service: str
    server_is_resp: bool
    evidence: str
    confidence: float
    roles: str

    def decision(self) -> _Decision:
        return self


class BackdoorFlow:
    """Per-connection state of the backdoor analyzer (small; freed when done).

    ``orig``/``resp`` are the flow table's endpoints; ``handshake`` says the
    table saw the SYN, so that ``orig`` is truly the client.
    """

    __slots__ = (
        "cfg",
        "dirs",
        "done",
        "handshake",
        "last_ts",
        "orig",
        "orig_p",
        "resp",
        "resp_p",
        "start_ts",
    )

    def __init__(
        self,
        cfg: BackdoorConfig,
        orig: Endpoint,
        resp: Endpoint,
        start_ts: int,
        handshake: bool,
    ) -> None:
        self.cfg = cfg
        self.orig = orig
        self.resp = resp
        self.orig_p = orig.port
        self.resp_p = resp.port
        self.start_ts = start_ts
        self.last_ts = start_ts
        self.handshake = handshake
        self.dirs = (_Direction(), _Direction())  # [0] from orig, [1] from resp
        self.done = False

    # ------------------------------------------------------------ input

    def data(self, from_orig: bool, ts_ns: int, data: bytes) -> bool:
        """New in-order stream bytes; returns True once the flow is decided."""
        if self.done or not data:
            return self.done
        if ts_ns > self.last_ts:  # noqa: PLR1730 - per packet: faster than max()
            self.last_ts = ts_ns
        d = self.dirs[0] if from_orig else self.dirs[1]
        if d.first_segment is None:
            d.first_segment = bytes(data[:64])
            d.first_ts = ts_ns
        d.stats.add(ts_ns, data)
        buf = d.buf
        limit = self.cfg.inspect_bytes
        if not d.closed and len(buf) < limit:
            buf += data[: limit - len(buf)]
            # Signatures look at the first line or the first bytes: the first
            # few deliveries settle it (finish() tries once more).
            if not d.matches and d.tries < MATCH_TRIES:
                d.tries += 1
                self._match(d)
        return self._decisive()

    def gap(self, from_orig: bool) -> None:
        """Bytes are missing in one direction: its prefix ends here."""
        if self.done:
            return
        d = self.dirs[0 if from_orig else 1]
        if d.buf or d.first_segment is not None:
            d.closed = True

    def _match(self, d: _Direction) -> None:
        if d.first_segment is None:
            return
        found = match_stream(bytes(d.buf), d.first_segment)
        other = self.dirs[1] if d is self.dirs[0] else self.dirs[0]
        # The root prompt only counts before the other side said anything.
        if other.first_segment is not None and other.first_ts < d.first_ts:
            found = [m for m in found if m.service != "root-shell"]
        d.matches = found

    def _decisive(self) -> bool:
        o, r = self.dirs
        if o.matches or r.matches:
            for d, other in ((o, r), (r, o)):
                for m in d.matches:
                    if m.role is Role.SERVER and m.confidence >= 0.8:
                        return True
                    if m.role is Role.CLIENT and other.first_segment is not None:
                        return True
                    if m.role is Role.EITHER and other.matches:
                        return True
        # The cut-off: max_data_packets each way (or twice that one way).
        return o.stats.num_pkts + r.stats.num_pkts >= 2 * self.cfg.max_data_packets

    # ------------------------------------------------------------ output

    def finish(self) -> Finding | None:
        """Classify with what was seen; None when nothing is known."""
        return self.conclude(self.orig.port, self.resp.port)

    def conclude(
        self,
        orig_p: int,
        resp_p: int,
        hosts: Callable[[], tuple[str, str]] | None = None,
    ) -> Finding | None:
        """:meth:`finish`, for the flow-table plugin: the endpoints' ports are
        ``orig_p``/``resp_p``, and ``hosts()`` gives the address texts, asked
        only when the connection is reported (address text is dear)."""
        self.done = True
        self.orig_p = orig_p
        self.resp_p = resp_p
        try:
            pick = self._decide()
            if pick is None:
                return None
            cfg = self.cfg
            server_is_resp = pick.server_is_resp
            standard = cfg.standard.is_standard(pick.service, resp_p if server_is_resp else orig_p)
            if standard and not cfg.report_standard:
                return None
            if pick.service == "interactive" and not cfg.report_interactive:
                return None
            dec = pick.decision()
            if dec.service == "telnet":
                dec = _telnet_lines(dec, *self.dirs)
        finally:
            self.dirs = _RELEASED  # drop the buffers
        if hosts is not None:
            orig_h, resp_h = hosts()
            self.orig = Endpoint(orig_h, orig_p)
            self.resp = Endpoint(resp_h, resp_p)
        client, server = (self.orig, self.resp) if server_is_resp else (self.resp, self.orig)
        return Finding(
            ts_ns=self.start_ts,
            uid=make_uid(self.start_ts, self.orig, self.resp, "tcp"),
            client=client,
            server=server,
            proto="tcp",
            service=dec.service,
            evidence=dec.evidence,
            confidence=dec.confidence,
            standard=standard,
            roles=dec.roles,
            midstream=not self.handshake,
        )

    def _decide(self) -> _Pick | _Decision | None:
        o, r = self.dirs
        for d in (o, r):
            if not d.matches and d.tries >= MATCH_TRIES:
                self._match(d)
        matches = [(m, True) for m in o.matches] + [(m, False) for m in r.matches]
        if not matches and not self.handshake:
            for d, from_orig in ((o, True), (r, False)):
                matches += [(m, from_orig) for m in match_midstream(bytes(d.buf))]
        pick = pick_service(matches, self.handshake, self._guess_server_is_resp)
        if pick is not None:
            return pick
        return self._stats_decision()

    def _stats_decision(self) -> _Decision | None:
        o, r = self.dirs
        texted: list[bool] = []

        def add_text() -> None:
            # Text statistics only for the connections the tests get that far
            # with (most are too short or show no keystrokes).
            if not texted:
                texted.append(True)
                o.stats.text(bytes(o.buf))
                r.stats.text(bytes(r.buf))

        duration = self.last_ts - self.start_ts
        if not self.handshake:
            ssh = ssh_lengths(o.stats, r.stats, add_text)
            if ssh.interactive:
                server_is_resp = self._guess_server_is_resp("ssh")
                return _Decision(
                    "ssh", server_is_resp, f"ssh-len: {ssh.evidence}", ssh.confidence, "guess"
                )
        verdict = interactive_verdict(o.stats, r.stats, duration, add_text)
        if verdict.interactive:
            return _Decision(
                "interactive",
                True,
                f"interactive: {verdict.evidence}",
                verdict.confidence,
                "handshake" if self.handshake else "guess",
            )
        return None

    def _guess_server_is_resp(self, service: str) -> bool:
        if self.handshake:
            return True
        std = self.cfg.standard
        if std.is_standard(service, self.resp_p) != std.is_standard(service, self.orig_p):
            return std.is_standard(service, self.resp_p)
        return True


def _telnet_lines(dec: _Decision, o: _Direction, r: _Direction) -> _Decision:
    """Raise a telnet match's confidence when the text looks like a terminal session."""
    if dec.service != "telnet":
        return dec
    stats = line_stats(bytes(o.buf) + bytes(r.buf))
    if not stats.texty():
        return dec
    conf = min(0.95, dec.confidence + 0.1)
    ev = (
        f"{dec.evidence}; lines {stats.num_normal_lines}/{stats.num_lines} normal, "
        f"{stats.num_7bit_ascii}/{stats.num_bytes} ASCII"
    )
    return _Decision(dec.service, dec.server_is_resp, ev, conf, dec.roles)


def _describe(m: Match, from_orig: bool, server_is_resp: bool) -> str:
    side = "client" if from_orig == server_is_resp else "server"
    detail = f" '{m.detail}'" if m.detail else ""
    return f"{side} {m.evidence}{detail}"


def decide(
    matches: list[tuple[Match, bool]],
    handshake: bool,
    guess: Callable[[str], bool] | None = None,
) -> _Decision | None:
    """Combine the matches of both directions into one service and one server.

    ``matches`` pairs each match with whether the originator sent it. The
    server is decided first: by the best server-role match, else by the best
    client-role match, else (only symmetric matches) by the handshake, else
    by ``guess(service)`` (True: the responder is the server). Then the
    service is what the server said (server-role or symmetric matches from
    its side), and only when it said nothing recognisable, what the client
    said. Agreement of both sides raises the confidence.
    """
    pick = pick_service(matches, handshake, guess)
    return None if pick is None else pick.decision()


class _Pick:
    """What :func:`decide` chose (service, server); the evidence text on demand,
    so that connections on their standard port cost no text at all."""

    __slots__ = ("best", "by_client", "by_server", "fo", "roles", "server_is_resp", "service")

    def __init__(  # noqa: PLR0917 - private, one caller
        self,
        service: str,
        server_is_resp: bool,
        roles: str,
        best: Match,
        fo: bool,
        by_server: list[tuple[Match, bool]],
        by_client: list[tuple[Match, bool]],
    ) -> None:
        self.service = service
        self.server_is_resp = server_is_resp
        self.roles = roles
        self.best = best
        self.fo = fo
        self.by_server = by_server
        self.by_client = by_client

    def decision(self) -> _Decision:
        best, fo, service, server_is_resp = self.best, self.fo, self.service, self.server_is_resp
        conf = best.confidence
        evidence = [_describe(best, fo, server_is_resp)]
        others = [(m, f) for m, f in self.by_server + self.by_client if m is not best]
        same = [(m, f) for m, f in others if m.service == service and f != fo]
        if same:
            m, f = max(same, key=_conf)
            conf = min(0.99, max(conf, m.confidence) + 0.04)
            evidence.append(_describe(m, f, server_is_resp))
        else:
            for m, f in self.by_client:
                if m.service != service:
                    evidence.append(f"client spoke {m.service}: {_describe(m, f, server_is_resp)}")
                    break
        return _Decision(service, server_is_resp, "; ".join(evidence), round(conf, 2), self.roles)


def pick_service(
    matches: list[tuple[Match, bool]],
    handshake: bool,
    guess: Callable[[str], bool] | None = None,
) -> _Pick | None:
    """The choice of :func:`decide`, without the evidence text."""
    if not matches:
        return None
    server: tuple[Match, bool] | None = None
    client: tuple[Match, bool] | None = None
    for item in matches:  # the first of the most confident, as max() picks
        role = item[0].role
        if role is Role.SERVER:
            if server is None or item[0].confidence > server[0].confidence:
                server = item
        elif role is Role.CLIENT and (client is None or item[0].confidence > client[0].confidence):
            client = item
    roles = "payload"
    if server is not None:
        server_is_resp = not server[1]
    elif client is not None:
        server_is_resp = client[1]
    else:
        best = max(matches, key=_conf)[0]
        if handshake or guess is None:
            server_is_resp, roles = True, "handshake" if handshake else "guess"
        else:
            server_is_resp, roles = guess(best.service), "guess"
    by_server = [(m, f) for m, f in matches if f != server_is_resp and m.role is not Role.CLIENT]
    by_client = [(m, f) for m, f in matches if f == server_is_resp and m.role is not Role.SERVER]
    if by_server:
        best, fo = max(by_server, key=_conf)
        service = best.service
        if best.evidence == "220-banner":
            # A bare 220 greeting: the client's command says FTP or SMTP.
            for m, _ in by_client:
                if m.service in ("ftp", "smtp"):
                    service = m.service
                    break
    else:
        best, fo = max(by_client, key=_conf)
        service = best.service
    return _Pick(service, server_is_resp, roles, best, fo, by_server, by_client)


def _conf(item: tuple[Match, bool]) -> float:
    return item[0].confidence


_UNKNOWN = Endpoint("", 0)


class BackdoorAnalyzer(Analyzer[BackdoorFlow]):
    """The flow-table plugin: one :class:`BackdoorFlow` per TCP connection.

    Findings go to ``emit`` as soon as a connection is decided (usually after
    its first bytes each way), so output streams and per-flow state is freed
    early; the analyzer then returns DONE and the table stops reassembling
    the connection. Other protocols are ignored (no state at all).
    """

    name = "backdoor"
    wants_stream = True

    def __init__(
        self,
        config: BackdoorConfig,
        emit: Callable[[Finding], None],
        on_decided: Callable[[Flow], None] | None = None,
        on_ended: Callable[[Flow], None] | None = None,
    ) -> None:
        self.config = config
        self.emit = emit
        # Optional observers (the fast path uses them to drop a decided
        # connection's remaining head packets before they are decoded).
        self.on_decided = on_decided
        self.on_ended = on_ended
        self.flows_seen = 0
        self.flows_decided_early = 0

    def on_flow_start(self, flow: Flow) -> BackdoorFlow | None:
        if flow.proto != 6:
            return None
        self.flows_seen += 1
        # Endpoints are filled in when the flow is reported (address text is dear).
        return BackdoorFlow(self.config, _UNKNOWN, _UNKNOWN, flow.start_ns, flow.role_certain)

    def on_data(
        self, flow: Flow, state: BackdoorFlow, direction: int, data: bytes, ts_ns: int
    ) -> bool | None:
        if state.data(direction == ORIG, ts_ns, data):
            self.flows_decided_early += 1
            self._report(flow, state)
            if self.on_decided is not None:
                self.on_decided(flow)
            return DONE
        return None

    def on_gap(
        self, flow: Flow, state: BackdoorFlow, direction: int, nbytes: int, ts_ns: int
    ) -> bool | None:
        state.gap(direction == ORIG)
        return None

    def on_roles_swapped(self, flow: Flow, state: BackdoorFlow) -> None:
        state.dirs = (state.dirs[1], state.dirs[0])

    def on_flow_end(self, flow: Flow, state: BackdoorFlow, reason: str) -> None:
        if not state.done:
            self._report(flow, state)
        if self.on_ended is not None:
            self.on_ended(flow)

    def _report(self, flow: Flow, state: BackdoorFlow) -> None:
        state.handshake = certain = flow.role_certain
        state.last_ts = max(state.last_ts, flow.last_ns)
        finding = state.conclude(flow.orig_p, flow.resp_p, lambda: (flow.orig_h, flow.resp_h))
        if finding is None:
            return
        if finding.server is not state.resp and not certain:
            # The payload says the table's guess was backwards: fix it for the
            # analyzers registered after this one (contents file names).
            flow.swap_roles("payload")
        self.emit(finding)
