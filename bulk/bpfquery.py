"""What a BPF expression requires of a trace, found conservatively.

``requirements(expression)`` reads a tcpdump filter expression and returns a
:class:`Requirement`: a condition on the *set* of addresses, ports, IP
protocols and network-layer protocols a trace holds, that every trace
containing at least one matching packet satisfies. A per-trace index
(:mod:`bulk.archive.hostindex`) evaluates it to skip traces that cannot match.

Soundness is the only rule: a requirement may be weaker than the filter (it
may let through traces with no match), never stronger (a skipped trace would
change the result). So:

- ``host A and port 80`` requires A and 80; ``host A or host B`` requires A or
  B; ``not host A`` requires nothing; anything not understood requires
  nothing (relations such as ``tcp[13] & 2 != 0``, ``ether host``, names
  resolved through DNS or /etc/services, ``gateway``, ``protochain``, ...).
- The boolean structure follows libpcap's grammar exactly: ``and`` and
  ``or`` have EQUAL precedence and associate to the left (``A or B and C`` is
  ``(A or B) and C``); ``not`` binds to the next term; a bare identifier after
  ``and``/``or`` inherits the qualifiers of the previous primitive
  (``host A or B``, ``tcp port 80 or 443``).
- ``vlan``, ``mpls`` and ``pppoes`` move the offsets of everything parsed
  after them. They are accepted only as top-level conjuncts (every match is
  then encapsulated that way, and the index holds the addresses found at
  every encapsulation depth); anywhere else, and for ``geneve`` and the
  link-specific keywords (ATM, MTP, pf, 802.11), the whole expression
  requires nothing.
- Whatever this module fails to parse requires nothing. It is only ever
  called on expressions libpcap has already compiled.

The property test ``tests/unit/test_hostindex_sound.py`` checks soundness
against libpcap itself: for random packets and random filter shapes, a
packet the compiled filter accepts always satisfies the requirement computed
here over the index of that packet alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple, Protocol

# -- requirements -----------------------------------------------------------------


class Facts(Protocol):
    """What an index can answer about one trace."""

    def has_addr4(self, value: int, mask: int) -> bool: ...
    def has_addr6(self, value: int, prefixlen: int) -> bool: ...
    def has_port(self, lo: int, hi: int, protos: frozenset[int]) -> bool: ...
    def has_proto(self, proto: int) -> bool: ...
    def has_l3(self, kind: str) -> bool: ...


class Always(NamedTuple):
    """Requires nothing."""

    def holds(self, facts: Facts) -> bool:
        return True

    def describe(self) -> str:
        return "nothing"


class Addr4(NamedTuple):
    value: int
    mask: int

    def holds(self, facts: Facts) -> bool:
        return facts.has_addr4(self.value, self.mask)

    def describe(self) -> str:
        from socket import AF_INET, inet_ntop  # noqa: PLC0415 - for -v only

        addr = inet_ntop(AF_INET, self.value.to_bytes(4, "big"))
        if self.mask == 0xFFFFFFFF:
            return f"host {addr}"
        inv = ~self.mask & 0xFFFFFFFF
        if inv & (inv + 1) == 0:
            return f"net {addr}/{32 - inv.bit_length()}"
        mask = inet_ntop(AF_INET, self.mask.to_bytes(4, "big"))
        return f"net {addr} mask {mask}"


class Addr6(NamedTuple):
    value: int
    prefixlen: int

    def holds(self, facts: Facts) -> bool:
        return facts.has_addr6(self.value, self.prefixlen)

    def describe(self) -> str:
        from socket import AF_INET6, inet_ntop  # noqa: PLC0415 - for -v only

        addr = inet_ntop(AF_INET6, self.value.to_bytes(16, "big"))
        return f"host {addr}" if self.prefixlen == 128 else f"net {addr}/{self.prefixlen}"


class Port(NamedTuple):
    lo: int
    hi: int
    protos: frozenset[int]

    def holds(self, facts: Facts) -> bool:
        return facts.has_port(self.lo, self.hi, self.protos)

    def describe(self) -> str:
        names = "/".join(_PROTO_LABELS.get(p, str(p)) for p in sorted(self.protos))
        span = str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"
        return f"{names} port {span}"


class Proto(NamedTuple):
    proto: int

    def holds(self, facts: Facts) -> bool:
        return facts.has_proto(self.proto)

    def describe(self) -> str:
        return f"ip proto {self.proto}"


class Layer3(NamedTuple):
    kind: str  # "ip", "ip6", "arp", "rarp"

    def holds(self, facts: Facts) -> bool:
        return facts.has_l3(self.kind)

    def describe(self) -> str:
        return self.kind


class AllOf(NamedTuple):
    items: tuple[Requirement, ...]

    def holds(self, facts: Facts) -> bool:
        return all(item.holds(facts) for item in self.items)

    def describe(self) -> str:
        return "(" + " and ".join(item.describe() for item in self.items) + ")"


class AnyOf(NamedTuple):
    items: tuple[Requirement, ...]

    def holds(self, facts: Facts) -> bool:
        return any(item.holds(facts) for item in self.items)

    def describe(self) -> str:
        return "(" + " or ".join(item.describe() for item in self.items) + ")"


# A condition on a trace's facts: immutable records (NamedTuples: a dataclass
# import costs more start-up than a whole skipped archive), told apart by type.
Requirement = Always | Addr4 | Addr6 | Port | Proto | Layer3 | AllOf | AnyOf


ALWAYS = Always()
_PROTO_LABELS = {6: "tcp", 17: "udp", 132: "sctp"}
_PORT_PROTOS = frozenset({6, 17, 132})


def all_of(a: Requirement, b: Requirement) -> Requirement:
    if isinstance(a, Always):
        return b
    if isinstance(b, Always):
        return a
    left = a.items if isinstance(a, AllOf) else (a,)
    right = b.items if isinstance(b, AllOf) else (b,)
    return AllOf(left + right)


def any_of(a: Requirement, b: Requirement) -> Requirement:
    if isinstance(a, Always) or isinstance(b, Always):
        return ALWAYS
    left = a.items if isinstance(a, AnyOf) else (a,)
    right = b.items if isinstance(b, AnyOf) else (b,)
    return AnyOf(left + right)


# -- tokens (libpcap scanner.l) ---------------------------------------------------------


class Unsupported(Exception):
    """The expression uses something this module does not model: require nothing."""


# Every keyword of libpcap's scanner (1.9 and 1.10), by canonical token.
_KEYWORDS: dict[str, str] = {
    "dst": "DST", "src": "SRC",
    "link": "LINK", "ether": "LINK", "ppp": "LINK", "slip": "LINK",
    "fddi": "LINK", "tr": "LINK", "wlan": "LINK",
    "arp": "ARP", "rarp": "RARP", "ip": "IP", "sctp": "SCTP", "tcp": "TCP", "udp": "UDP",
    "icmp": "ICMP", "igmp": "IGMP", "igrp": "IGRP", "pim": "PIM", "vrrp": "VRRP",
    "carp": "CARP", "radio": "RADIO", "ip6": "IPV6", "icmp6": "ICMPV6", "ah": "AH",
    "esp": "ESP", "atalk": "ATALK", "aarp": "AARP", "decnet": "DECNET", "lat": "LAT",
    "sca": "SCA", "moprc": "MOPRC", "mopdl": "MOPDL", "iso": "ISO", "esis": "ESIS",
    "es-is": "ESIS", "isis": "ISIS", "is-is": "ISIS", "l1": "L1", "l2": "L2", "iih": "IIH",
    "lsp": "LSP", "snp": "SNP", "csnp": "CSNP", "psnp": "PSNP", "clnp": "CLNP", "stp": "STP",
    "ipx": "IPX", "netbeui": "NETBEUI",
    "host": "HOST", "net": "NET", "mask": "NETMASK", "port": "PORT", "portrange": "PORTRANGE",
    "proto": "PROTO", "protochain": "PROTOCHAIN", "gateway": "GATEWAY",
    "type": "TYPE", "subtype": "SUBTYPE", "direction": "DIR", "dir": "DIR",
    "address1": "ADDR", "addr1": "ADDR", "address2": "ADDR", "addr2": "ADDR",
    "address3": "ADDR", "addr3": "ADDR", "address4": "ADDR", "addr4": "ADDR",
    "ra": "ADDR", "ta": "ADDR",
    "less": "LESS", "greater": "GREATER", "byte": "CBYTE",
    "broadcast": "BROADCAST", "multicast": "MULTICAST",
    "and": "AND", "or": "OR", "not": "NOT",
    "len": "LEN", "length": "LEN", "inbound": "INBOUND", "outbound": "OUTBOUND",
    "ifindex": "IFINDEX",
    "vlan": "VLAN", "mpls": "MPLS", "pppoed": "PPPOED", "pppoes": "PPPOES",
    "geneve": "GENEVE", "vxlan": "VXLAN",
    "lane": "ATM", "llc": "ATM", "metac": "ATM", "bcc": "ATM", "oam": "ATM", "oamf4": "ATM",
    "oamf4ec": "ATM", "oamf4sc": "ATM", "sc": "ATM", "ilmic": "ATM", "vpi": "ATM",
    "vci": "ATM", "connectmsg": "ATM", "metaconnect": "ATM",
    "on": "PF", "ifname": "PF", "rset": "PF", "ruleset": "PF", "rnr": "PF", "rulenum": "PF",
    "srnr": "PF", "subrulenum": "PF", "reason": "PF", "action": "PF",
    "fisu": "MTP", "lssu": "MTP", "lsu": "MTP", "msu": "MTP", "hfisu": "MTP", "hlssu": "MTP",
    "hmsu": "MTP", "sio": "MTP", "opc": "MTP", "dpc": "MTP", "sls": "MTP", "hsio": "MTP",
    "hopc": "MTP", "hdpc": "MTP", "hsls": "MTP",
}  # fmt: skip

# Names the scanner turns into numbers (icmp-echo, tcp-syn, ...): any value is fine here.
_NUM_WORDS = re.compile(
    r"icmptype|icmpcode|icmp6type|icmp6code|tcpflags|icmp-[a-z]+|icmp6-[a-z0-9]+|"
    r"tcp-(?:fin|syn|rst|push|ack|urg|ece|cwr)"
)
_TWO_CHAR_OPS = (">=", "<=", "!=", "==", "<<", ">>", "&&", "||")
_ONE_CHAR_OPS = set("+-*/%:[]!<>()&|^=")
_ID = re.compile(r"[A-Za-z0-9](?:[-_.A-Za-z0-9]*[.A-Za-z0-9])?")
_NUM = re.compile(r"0[xX][0-9A-Fa-f]+|[0-9]+")
_HID = re.compile(r"[0-9]+(?:\.[0-9]+){1,3}")
_HEXCOLON = re.compile(r"[0-9A-Fa-f:.]+")
_MAC = re.compile(
    r"[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){5}|[0-9A-Fa-f]{1,2}(?:-[0-9A-Fa-f]{1,2}){5}"
    r"|[0-9A-Fa-f]{1,2}(?:\.[0-9A-Fa-f]{1,2}){5}|[0-9A-Fa-f]{4}(?:\.[0-9A-Fa-f]{4}){2}"
    r"|[0-9A-Fa-f]{12}"
)
_AID = re.compile(r"\$[0-9A-Fa-f]{1,2}")
_ESCAPED = re.compile(r"\\[^ !()\n\t]+")
_SPACE = " \t\r\n"


class Token(NamedTuple):
    kind: str  # a keyword token, "NUM", "HID", "HID6", "EID", "AID", "ID", "OP", "END"
    text: str

    @property
    def number(self) -> int:
        return _stou(self.text)


_END = Token("END", "")


def _stou(text: str) -> int:
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    if len(text) > 1 and text[0] == "0":
        return int(text, 8)
    return int(text)


def tokenize(text: str) -> list[Token]:
    """Split as libpcap's flex scanner does (longest match, earliest rule on ties)."""
    out: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
            continue
        # (length, rule rank, token); lower rank wins a tie, as in flex.
        cands: list[tuple[int, int, Token]] = []
        rest = text[i:]
        for word, kind in _KEYWORDS.items():
            if rest.startswith(word):
                cands.append((len(word), 0, Token(kind, word)))
        two = text[i : i + 2]
        if two in _TWO_CHAR_OPS:
            kind = "AND" if two == "&&" else "OR" if two == "||" else "OP"
            cands.append((2, 1, Token(kind, two)))
        if c in _ONE_CHAR_OPS:
            cands.append((1, 1, Token("NOT" if c == "!" else "OP", c)))
        m = _AID.match(text, i)
        if m:
            cands.append((m.end() - i, 2, Token("AID", m.group())))
        m = _MAC.match(text, i)
        if m:
            cands.append((m.end() - i, 3, Token("EID", m.group())))
        m = _NUM.match(text, i)
        if m:
            cands.append((m.end() - i, 4, Token("NUM", m.group())))
        m = _HID.match(text, i)
        if m:
            cands.append((m.end() - i, 5, Token("HID", m.group())))
        m = _HEXCOLON.match(text, i)
        if m and ":" in m.group():
            v6 = _longest_v6(m.group())
            if v6:
                cands.append((len(v6), 6, Token("HID6", v6)))
        m = _NUM_WORDS.match(rest)
        if m:
            cands.append((m.end(), 7, Token("NUM", "0")))  # value irrelevant here
        m = _ID.match(text, i)
        if m:
            cands.append((m.end() - i, 8, Token("ID", m.group())))
        m = _ESCAPED.match(text, i)
        if m:
            cands.append((m.end() - i, 9, Token("ID", m.group()[1:])))
        if not cands:
            raise Unsupported(f"cannot scan {text[i:]!r}")
        length, _rank, tok = max(cands, key=lambda t: (t[0], -t[1]))
        out.append(tok)
        i += length
    return out


def _longest_v6(run: str) -> str | None:
    import socket  # noqa: PLC0415 - IPv6 expressions only

    for end in range(len(run), 1, -1):
        cand = run[:end]
        if ":" not in cand:
            break
        try:
            socket.inet_pton(socket.AF_INET6, cand)
        except OSError:
            continue
        return cand
    return None


# -- parse tree -------------------------------------------------------------------------


class Leaf(NamedTuple):
    req: Requirement
    shifter: bool = False  # vlan / mpls / pppoes: moves the offsets of what follows


class And(NamedTuple):
    left: Node
    right: Node


class Or(NamedTuple):
    left: Node
    right: Node


class Not(NamedTuple):
    child: Node


Node = Leaf | And | Or | Not


class Qual(NamedTuple):
    """A primitive's qualifiers: protocol, direction, address type (None: default)."""

    proto: str | None
    dir: str | None
    addr: str | None


_PNAMES = {
    "LINK", "IP", "ARP", "RARP", "SCTP", "TCP", "UDP", "ICMP", "IGMP", "IGRP", "PIM", "VRRP",
    "CARP", "RADIO", "IPV6", "ICMPV6", "AH", "ESP", "ATALK", "AARP", "DECNET", "LAT", "SCA",
    "MOPRC", "MOPDL", "ISO", "ESIS", "ISIS", "L1", "L2", "IIH", "LSP", "SNP", "CSNP", "PSNP",
    "CLNP", "STP", "IPX", "NETBEUI",
}  # fmt: skip
_AQUALS = {"HOST": "host", "NET": "net", "PORT": "port", "PORTRANGE": "portrange"}
_ID_KINDS = {"ID", "HID", "HID6", "EID", "AID"}
_ARITH_OPS = {
    "+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>", ">", "<", ">=", "<=", "=", "==", "!=",
}  # fmt: skip
_UNSUPPORTED = {"GENEVE", "VXLAN", "ATM", "PF", "MTP", "TYPE", "SUBTYPE", "DIR", "ADDR"}
_ABBREV_PROTOS = {
    "TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPV6": 58, "IGMP": 2, "IGRP": 9,
    "PIM": 103, "VRRP": 112, "CARP": 112, "AH": 51, "ESP": 50,
}  # fmt: skip
_LAYER3 = {"IP": "ip", "IPV6": "ip6", "ARP": "arp", "RARP": "rarp"}
_PROTO_NAMES = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "sctp": 132}


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.toks = tokens
        self.pos = 0

    def peek(self, ahead: int = 0) -> Token:
        i = self.pos + ahead
        return self.toks[i] if i < len(self.toks) else _END

    def take(self) -> Token:
        tok = self.peek()
        if tok.kind == "END":
            raise Unsupported("unexpected end")
        self.pos += 1
        return tok

    def expect_op(self, text: str) -> None:
        tok = self.take()
        if tok.kind != "OP" or tok.text != text:
            raise Unsupported(f"expected {text!r}, got {tok.text!r}")

    # expr: term | expr and term | expr and id | expr or term | expr or id
    def expr(self, q0: Qual | None, id_first: bool) -> tuple[Node, Qual | None]:
        node, q = self.primary(q0, id_ok=id_first)
        while self.peek().kind in ("AND", "OR"):
            op = self.take().kind
            rhs, q = self.primary(q, id_ok=True)
            node = And(node, rhs) if op == "AND" else Or(node, rhs)
        return node, q

    def primary(self, q_prev: Qual | None, id_ok: bool) -> tuple[Node, Qual | None]:
        tok = self.peek()
        kind = tok.kind
        if kind == "NOT":
            self.take()
            child, q = self.primary(q_prev, id_ok)
            return Not(child), q
        if kind == "OP" and tok.text == "(":
            return self.paren(q_prev, id_ok)
        if kind in _UNSUPPORTED:
            raise Unsupported(tok.text)
        if kind in ("SRC", "DST", "PROTO", "PROTOCHAIN", "GATEWAY") or kind in _AQUALS:
            q = self.head(None)
            return self.ident(q), q
        if kind in _PNAMES:
            nxt = self.peek(1)
            if nxt.kind == "OP" and nxt.text == "[":
                return self.relation(), None
            if nxt.kind in ("SRC", "DST", "PROTO", "PROTOCHAIN", "GATEWAY") or nxt.kind in _AQUALS:
                self.take()
                q = self.head(kind)
                return self.ident(q), q
            if nxt.kind in ("BROADCAST", "MULTICAST"):
                self.take()
                self.take()
                return Leaf(ALWAYS), None
            if nxt.kind in _UNSUPPORTED:
                raise Unsupported(nxt.text)
            self.take()
            return Leaf(_abbrev(kind)), None
        if kind in ("BROADCAST", "MULTICAST", "INBOUND", "OUTBOUND", "PPPOED"):
            self.take()
            return Leaf(ALWAYS), None
        if kind in ("LESS", "GREATER", "IFINDEX"):
            self.take()
            self.take_num()
            return Leaf(ALWAYS), None
        if kind == "CBYTE":
            self.take()
            self.take_num()
            self.take()
            self.take_num()
            return Leaf(ALWAYS), None
        if kind in ("VLAN", "MPLS", "PPPOES"):
            self.take()
            if self.peek().kind == "NUM" or (self.peek().kind == "OP" and self.peek().text == "("):
                self.pnum()
            return Leaf(ALWAYS, shifter=True), None
        if kind == "LEN" or (kind == "OP" and tok.text == "-"):
            return self.relation(), None
        if kind == "NUM":
            nxt = self.peek(1)
            if nxt.kind == "OP" and nxt.text in _ARITH_OPS:
                return self.relation(), None
            if id_ok and q_prev is not None:
                return self.ident(q_prev), q_prev
            raise Unsupported("number where a primitive is expected")
        if kind in _ID_KINDS:
            if id_ok and q_prev is not None:
                return self.ident(q_prev), q_prev
            raise Unsupported(f"bare {tok.text!r}")
        raise Unsupported(f"unexpected {tok.text!r}")

    def take_num(self) -> int:
        tok = self.take()
        if tok.kind != "NUM":
            raise Unsupported("expected a number")
        return tok.number

    def pnum(self) -> int:
        tok = self.peek()
        if tok.kind == "OP" and tok.text == "(":
            self.take()
            value = self.pnum()
            self.expect_op(")")
            return value
        return self.take_num()

    def matching(self, start: int) -> int:
        depth = 0
        for i in range(start, len(self.toks)):
            t = self.toks[i]
            if t.kind == "OP" and t.text in "([":
                depth += 1
            elif t.kind == "OP" and t.text in ")]":
                depth -= 1
                if depth == 0:
                    return i
        raise Unsupported("unbalanced parentheses")

    def paren(self, q_prev: Qual | None, id_ok: bool) -> tuple[Node, Qual | None]:
        close = self.matching(self.pos)
        after = self.toks[close + 1] if close + 1 < len(self.toks) else _END
        if after.kind == "OP" and after.text in _ARITH_OPS:
            return self.relation(), None
        self.take()  # "("
        if self._starts_id(self.pos):
            if not id_ok or q_prev is None:
                raise Unsupported("identifier list without qualifiers")
            node = self.pid(q_prev)
        else:
            node, _q = self.expr(q_prev, id_first=False)
        self.expect_op(")")
        # libpcap: both "paren expr )" and "paren pid )" leave the qualifiers
        # that were in force before the parenthesis.
        return node, q_prev

    def _starts_id(self, i: int) -> bool:
        while i < len(self.toks) and self.toks[i].kind == "NOT":
            i += 1
        if i >= len(self.toks):
            return False
        t = self.toks[i]
        if t.kind in _ID_KINDS:
            return True
        if t.kind == "NUM":
            nxt = self.toks[i + 1] if i + 1 < len(self.toks) else _END
            return not (nxt.kind == "OP" and nxt.text in _ARITH_OPS)
        if t.kind == "OP" and t.text == "(":
            return self._starts_id(i + 1)
        return False

    # pid: nid | qid and id | qid or id   (a list of identifiers sharing qualifiers)
    def pid(self, q: Qual) -> Node:
        node = self.ident(q)
        while self.peek().kind in ("AND", "OR"):
            op = self.take().kind
            rhs = self.ident(q)
            node = And(node, rhs) if op == "AND" else Or(node, rhs)
        return node

    def relation(self) -> Node:
        """Skip ``arth relop arth``: up to and/or or an unbalanced ')' at depth 0."""
        depth = 0
        start = self.pos
        while True:
            t = self.peek()
            if t.kind == "END":
                break
            if depth == 0 and t.kind in ("AND", "OR"):
                break
            if t.kind == "OP" and t.text in "([":
                depth += 1
            elif t.kind == "OP" and t.text in ")]":
                if depth == 0:
                    break
                depth -= 1
            self.pos += 1
        if self.pos == start:
            raise Unsupported("empty relation")
        return Leaf(ALWAYS)

    # head: pqual dqual aqual | pqual dqual | pqual aqual | pqual PROTO | pqual PROTOCHAIN
    #       | pqual GATEWAY
    def head(self, pname: str | None) -> Qual:
        tok = self.peek()
        direction: str | None = None
        if tok.kind in ("SRC", "DST"):
            self.take()
            direction = tok.kind.lower()
            if self.peek().kind in ("AND", "OR"):
                other = self.peek(1)
                if other.kind in ("SRC", "DST") and other.kind != tok.kind:
                    self.take()
                    self.take()
                    direction = "both"
            tok = self.peek()
            if tok.kind in _AQUALS:
                self.take()
                return Qual(pname, direction, _AQUALS[tok.kind])
            return Qual(pname, direction, None)
        self.take()
        if tok.kind in _AQUALS:
            return Qual(pname, None, _AQUALS[tok.kind])
        return Qual(pname, None, tok.kind.lower())  # proto, protochain, gateway

    # id: nid | pnum | paren pid ')' ; nid also: not id
    def ident(self, q: Qual) -> Node:
        tok = self.peek()
        if tok.kind == "NOT":
            self.take()
            return Not(self.ident(q))
        if tok.kind == "OP" and tok.text == "(":
            self.take()
            node = self.pid(q)
            self.expect_op(")")
            return node
        if tok.kind == "NUM":
            return Leaf(_leaf_num(q, self.pnum()))
        if tok.kind == "HID":
            self.take()
            nxt = self.peek()
            if nxt.kind == "OP" and nxt.text == "/":
                self.take()
                return Leaf(_leaf_hid(q, tok.text, prefixlen=self.take_num()))
            if nxt.kind == "NETMASK":
                self.take()
                mask = self.take()
                if mask.kind != "HID":
                    raise Unsupported("mask")
                return Leaf(_leaf_hid(q, tok.text, mask_text=mask.text))
            return Leaf(_leaf_hid(q, tok.text))
        if tok.kind == "HID6":
            self.take()
            nxt = self.peek()
            plen = 128
            if nxt.kind == "OP" and nxt.text == "/":
                self.take()
                plen = self.take_num()
            return Leaf(_leaf_hid6(q, tok.text, plen))
        if tok.kind == "ID":
            self.take()
            return Leaf(_leaf_id(q, tok.text))
        if tok.kind in ("EID", "AID"):
            self.take()
            return Leaf(ALWAYS)
        raise Unsupported(f"expected an identifier, got {tok.text!r}")


# -- leaves -----------------------------------------------------------------------------

_V4_PROTOS = (None, "IP", "ARP", "RARP")


def _abbrev(kind: str) -> Requirement:
    if kind in _ABBREV_PROTOS:
        return Proto(_ABBREV_PROTOS[kind])
    if kind in _LAYER3:
        return Layer3(_LAYER3[kind])
    return ALWAYS


def _port_protos(q: Qual) -> frozenset[int] | None:
    if q.proto in (None, "IP", "IPV6"):
        return _PORT_PROTOS
    if q.proto in ("TCP", "UDP", "SCTP"):
        return frozenset({_ABBREV_PROTOS[q.proto]})
    return None


def _leaf_num(q: Qual, value: int) -> Requirement:
    if q.addr in ("port", "portrange"):
        protos = _port_protos(q)
        if protos is None or not 0 <= value <= 0xFFFF:
            return ALWAYS
        return Port(value, value, protos)
    if q.addr == "proto":
        if q.proto in (None, "IP", "IPV6") and 0 <= value <= 255:
            return Proto(value)
        return ALWAYS
    if q.addr in (None, "host", "net") and q.proto in _V4_PROTOS:
        v = value & 0xFFFFFFFF
        mask = 0xFFFFFFFF
        if q.addr == "net":
            while v and not v & 0xFF000000:
                v = (v << 8) & 0xFFFFFFFF
                mask = (mask << 8) & 0xFFFFFFFF
        return Addr4(v & mask, mask)
    return ALWAYS


def _atoin(text: str) -> tuple[int, int]:
    """libpcap's __pcap_atoin: dotted parts, value and length in bits."""
    parts = text.split(".")
    value = 0
    for part in parts:
        if not part.isdigit():
            raise Unsupported(text)
        n = int(part)
        if n > 255:
            raise Unsupported(text)
        value = (value << 8) | n
    return value, 8 * len(parts)


def _leaf_hid(
    q: Qual, text: str, prefixlen: int | None = None, mask_text: str | None = None
) -> Requirement:
    if q.addr not in (None, "host", "net") or q.proto not in _V4_PROTOS:
        return ALWAYS
    try:
        value, vlen = _atoin(text)
    except Unsupported:
        return ALWAYS
    value = (value << (32 - vlen)) & 0xFFFFFFFF
    if prefixlen is not None:
        if not 0 <= prefixlen <= 32:
            return ALWAYS
        mask = (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF
    elif mask_text is not None:
        try:
            m, mlen = _atoin(mask_text)
        except Unsupported:
            return ALWAYS
        mask = (m << (32 - mlen)) & 0xFFFFFFFF
    else:
        mask = (0xFFFFFFFF << (32 - vlen)) & 0xFFFFFFFF
    return Addr4(value & mask, mask)


def _leaf_hid6(q: Qual, text: str, prefixlen: int) -> Requirement:
    if q.addr not in (None, "host", "net") or q.proto not in (None, "IPV6"):
        return ALWAYS
    if not 0 <= prefixlen <= 128:
        return ALWAYS
    import socket  # noqa: PLC0415 - IPv6 expressions only

    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:
        return ALWAYS
    mask = ((1 << 128) - 1) ^ ((1 << (128 - prefixlen)) - 1)
    return Addr6(value & mask, prefixlen)


_RANGE = re.compile(r"([0-9]+)-([0-9]+)")


def _leaf_id(q: Qual, text: str) -> Requirement:
    if q.addr == "portrange":
        m = _RANGE.fullmatch(text)
        protos = _port_protos(q)
        if m is None or protos is None:
            return ALWAYS
        lo, hi = sorted((int(m.group(1)), int(m.group(2))))
        if hi > 0xFFFF:
            return ALWAYS
        return Port(lo, hi, protos)
    if q.addr == "proto" and q.proto in (None, "IP", "IPV6"):
        proto = _PROTO_NAMES.get(text.lower())
        return ALWAYS if proto is None else Proto(proto)
    return ALWAYS  # host names, service names, ...


# -- from tree to requirement -------------------------------------------------------------


def _shifters_only_on_spine(node: Node, on_spine: bool = True) -> bool:
    if isinstance(node, Leaf):
        return on_spine or not node.shifter
    if isinstance(node, And):
        return _shifters_only_on_spine(node.left, on_spine) and _shifters_only_on_spine(
            node.right, on_spine
        )
    if isinstance(node, Or):
        return _shifters_only_on_spine(node.left, False) and _shifters_only_on_spine(
            node.right, False
        )
    if isinstance(node, Not):
        return _shifters_only_on_spine(node.child, False)
    raise TypeError(node)


def _requirement(node: Node) -> Requirement:
    if isinstance(node, Leaf):
        return node.req
    if isinstance(node, And):
        return all_of(_requirement(node.left), _requirement(node.right))
    if isinstance(node, Or):
        return any_of(_requirement(node.left), _requirement(node.right))
    if isinstance(node, Not):
        return ALWAYS
    raise TypeError(node)


def parse(expression: str) -> Node:
    """The boolean structure of ``expression`` (raises Unsupported)."""
    tokens = tokenize(expression)
    if not tokens:
        return Leaf(ALWAYS)
    parser = _Parser(tokens)
    node, _q = parser.expr(None, id_first=False)
    if parser.peek().kind != "END":
        raise Unsupported(f"trailing {parser.peek().text!r}")
    return node


def requirements(expression: str) -> Requirement:
    """What every trace holding a packet that matches ``expression`` must contain."""
    try:
        node = parse(expression)
    except (Unsupported, ValueError, RecursionError):
        return ALWAYS
    if not _shifters_only_on_spine(node):
        return ALWAYS
    return _requirement(node)


def iter_leaves(req: Requirement) -> Iterator[Requirement]:
    if isinstance(req, AllOf | AnyOf):
        for item in req.items:
            yield from iter_leaves(item)
    else:
        yield req
