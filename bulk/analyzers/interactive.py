"""Generic detection of interactive traffic (Zhang and Paxson 2000, section 4).

A person typing sends many small packets ("keystrokes") separated by human
inter-arrival times. Per direction we count data packets, pairs of
consecutive keystroke-sized packets, how many of those pairs are between
10 ms and 2 s apart, and the line statistics used for the text test. The
thresholds are those of Bro's interconn.bro, which implemented the paper:

* the connection lasts at least 2 s;
* one direction sent at least 10 data packets, of which at least 20% are
  the second of two consecutive keystrokes (``gamma``), and at least 20% of
  those pairs have a normal keystroke gap (``alpha``);
* and the bytes are text: at least 75% 7-bit ASCII, at least 2 lines and
  half of them at most 80 characters long (over the bytes the analyzer
  keeps: each direction's first 512 by default). Encrypted sessions fail
  the text test; for those that were seen without their start (no
  banner), the SSH packet-length test applies instead (see
  :func:`ssh_lengths`).

Only the first packets of a connection are inspected (the analyzer's cut-off),
so the statistics are those of its opening minutes at most.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from bulk.analyzers.signatures import NORMAL_LINE_LENGTH

MAX_KEYSTROKE_LEN = 20
MIN_INTERARRIVAL_NS = 10_000_000  # 10 ms
MAX_INTERARRIVAL_NS = 2_000_000_000  # 2 s
MIN_PKTS = 10
MIN_DURATION_NS = 2_000_000_000
MIN_GAMMA = 0.2
MIN_ALPHA = 0.2
MIN_BYTES = 10
MIN_ASCII_RATIO = 0.75
MIN_LINES = 2
MIN_NORMAL_LINE_RATIO = 0.5
# SSH packet lengths (Bro's ssh-len): SSH-2 packets are a multiple of the
# cipher block plus a MAC, so TCP payload lengths are 0 or 4 modulo 8.
SSH_MIN_PKTS = 8

SSH_MIN_RATIO = 0.9


class EndpointStats:
    """What one direction of a connection sent, packet by packet (small, fixed size)."""

    __slots__ = (
        "aligned4",
        "keystroke_prev",
        "last_byte",
        "last_keystroke_ns",
        "line_len",
        "num_7bit_ascii",
        "num_bytes",
        "num_keystroke_pairs",
        "num_lines",
        "num_normal_interarrivals",
        "num_normal_lines",
        "num_pkts",
    )

    def __init__(self) -> None:
        self.num_pkts = 0
        self.num_keystroke_pairs = 0
        self.num_normal_interarrivals = 0
        self.keystroke_prev = False
        self.last_keystroke_ns = 0
        self.num_bytes = 0
        self.num_7bit_ascii = 0
        self.num_lines = 0
        self.num_normal_lines = 0
        self.line_len = 0
        self.last_byte = 0
        self.aligned4 = 0

    def add(self, ts_ns: int, data: bytes) -> None:
        """Account one data packet's new bytes (sizes and timing only)."""
        n = len(data)
        if n == 0:
            return
        self.num_pkts += 1
        if n % 4 == 0:
            self.aligned4 += 1
        if n <= MAX_KEYSTROKE_LEN:
            if self.keystroke_prev:
                self.num_keystroke_pairs += 1
                gap = ts_ns - self.last_keystroke_ns
                if MIN_INTERARRIVAL_NS <= gap <= MAX_INTERARRIVAL_NS:
                    self.num_normal_interarrivals += 1
            self.keystroke_prev = True
            self.last_keystroke_ns = ts_ns
        else:
            self.keystroke_prev = False

    def text(self, data: bytes) -> None:
        """Account text statistics for the next bytes of this direction.

        The analyzer calls it once, at decision time, with the direction's
        first bytes (it keeps them anyway): text statistics then cost nothing
        for connections a signature decides."""
        if not data:
            return
        self.num_bytes += len(data)
        # C loops (translate, finditer): cheap even for full-size packets.
        self.num_7bit_ascii += len(data) - len(data.translate(None, _ASCII7))
        start = 0
        line_len = self.line_len
        for m in _EOL.finditer(data):
            pos = m.start()
            if pos == 0 and self.last_byte == 0x0D and data[0] == 0x0A:
                start = 1  # the LF of a CRLF split across packets
                continue
            line_len += pos - start
            self.num_lines += 1
            if line_len <= NORMAL_LINE_LENGTH:
                self.num_normal_lines += 1
            line_len = 0
            start = m.end()
        self.line_len = line_len + len(data) - start
        self.last_byte = data[-1]

    def gamma(self) -> float:
        return self.num_keystroke_pairs / self.num_pkts if self.num_pkts >= MIN_PKTS else 0.0

    def alpha(self) -> float:
        if self.num_keystroke_pairs == 0:
            return 0.0
        return self.num_normal_interarrivals / self.num_keystroke_pairs

    def is_interactive(self) -> bool:
        """Criteria 1-3 of interconn.bro: enough packets, keystrokes, human gaps."""
        return self.num_pkts >= MIN_PKTS and self.gamma() >= MIN_GAMMA and self.alpha() >= MIN_ALPHA


_ASCII7 = bytes(range(1, 128))
_EOL = re.compile(rb"\r\n|[\r\n]")


class Verdict(NamedTuple):
    interactive: bool
    evidence: str
    confidence: float


def interactive_verdict(
    orig: EndpointStats,
    resp: EndpointStats,
    duration_ns: int,
    add_text: Callable[[], None] | None = None,
) -> Verdict:
    """Zhang-Paxson's generic test over both directions of one connection.

    ``add_text``, when given, is called before the text statistics are read
    (so that a caller computes them only for the connections that get that
    far: long enough, with a keystroke pattern)."""
    if duration_ns < MIN_DURATION_NS:
        return Verdict(False, "too short", 0.0)
    if not (orig.is_interactive() or resp.is_interactive()):
        return Verdict(False, "no keystroke pattern", 0.0)
    if add_text is not None:
        add_text()
    num_bytes = orig.num_bytes + resp.num_bytes
    ascii7 = orig.num_7bit_ascii + resp.num_7bit_ascii
    lines = orig.num_lines + resp.num_lines
    normal = orig.num_normal_lines + resp.num_normal_lines
    side = orig if orig.is_interactive() else resp
    detail = (
        f"keystrokes gamma={side.gamma():.2f} alpha={side.alpha():.2f} over {side.num_pkts} packets"
    )
    if (
        num_bytes >= MIN_BYTES
        and ascii7 >= MIN_ASCII_RATIO * num_bytes
        and lines >= MIN_LINES
        and normal >= MIN_NORMAL_LINE_RATIO * lines
    ):
        return Verdict(True, f"{detail}; text {ascii7}/{num_bytes} ASCII, {lines} lines", 0.6)
    return Verdict(True, f"{detail}; not text", 0.4)


def ssh_lengths(
    orig: EndpointStats, resp: EndpointStats, add_text: Callable[[], None] | None = None
) -> Verdict:
    """Bro's ssh-len: without the banners, SSH still shows in its packet lengths.

    Both directions sent data, at least 8 packets in all, and at least 90%
    of payload lengths are multiples of 4 (0 or 4 modulo 8), with mostly
    non-text bytes. Weak evidence; used only for connections seen midstream.
    ``add_text`` as for :func:`interactive_verdict`.
    """
    pkts = orig.num_pkts + resp.num_pkts
    if orig.num_pkts == 0 or resp.num_pkts == 0 or pkts < SSH_MIN_PKTS:
        return Verdict(False, "too few packets", 0.0)
    aligned = orig.aligned4 + resp.aligned4
    if aligned < SSH_MIN_RATIO * pkts:
        return Verdict(False, "lengths not aligned", 0.0)
    if add_text is not None:
        add_text()
    num_bytes = orig.num_bytes + resp.num_bytes
    ascii7 = orig.num_7bit_ascii + resp.num_7bit_ascii
    if ascii7 >= MIN_ASCII_RATIO * num_bytes:
        return Verdict(False, "text", 0.0)
    return Verdict(True, f"{aligned}/{pkts} payload lengths are 0 or 4 mod 8, not text", 0.4)
