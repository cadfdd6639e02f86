"""TCP reassembly (bulk.flow.tcp): order, duplicates, overlaps, wraparound, gaps, limits."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from bulk.flow.tcp import ReassemblyLimits, TcpConn, TcpStream
from tests.pktbuild import ACK, FIN, PSH, RST, SYN

M32 = 0xFFFFFFFF


class Sink:
    """Collects deliveries per direction as a list of bytes / gap ints."""

    def __init__(self) -> None:
        self.out: dict[int, list[bytes | int]] = {0: [], 1: []}
        self.conn: TcpConn | None = None

    def _dir(self, conn: TcpConn, stream: TcpStream) -> int:
        return 0 if conn.streams[0] is stream else 1

    def stream_data(self, conn: TcpConn, stream: TcpStream, data: bytes, ts_ns: int) -> None:
        self.out[self._dir(conn, stream)].append(data)

    def stream_gap(self, conn: TcpConn, stream: TcpStream, nbytes: int, ts_ns: int) -> None:
        self.out[self._dir(conn, stream)].append(nbytes)

    def text(self, d: int) -> bytes:
        return b"".join(x if isinstance(x, bytes) else b"<<gap %d>>" % x for x in self.out[d])

    def data(self, d: int) -> bytes:
        return b"".join(x for x in self.out[d] if isinstance(x, bytes))

    def gaps(self, d: int) -> list[int]:
        return [x for x in self.out[d] if isinstance(x, int)]


def new(limits: ReassemblyLimits | None = None) -> tuple[TcpConn, Sink]:
    sink = Sink()
    conn = TcpConn(object(), sink, limits or ReassemblyLimits())
    return conn, sink


def seg(
    conn: TcpConn,
    d: int,
    seq: int,
    data: bytes = b"",
    flags: int = ACK,
    missing: int = 0,
    ack: int = 0,
) -> None:
    conn.segment(d, flags, seq & M32, ack & M32, data, missing, 0)


def cut(data: bytes, points: list[int]) -> list[tuple[int, bytes]]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [(a, data[a:b]) for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000),
    points=st.lists(st.integers(0, 3000), max_size=40),
    extra=st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 600)), max_size=15),
    isn=st.one_of(st.integers(0, M32), st.integers(M32 - 4000, M32)),
    seed=st.integers(0, 2**32),
)
def test_shuffled_duplicated_overlapping_segments_reassemble(
    data: bytes, points: list[int], extra: list[tuple[int, int]], isn: int, seed: int
) -> None:
    """A stream cut into segments, plus overlapping copies, in any order, comes out whole."""
    segments = cut(data, points)
    segments += segments[: len(segments) // 3]  # exact duplicates (retransmissions)
    for start, length in extra:  # overlapping re-cuts
        a = start % len(data)
        segments.append((a, data[a : a + length]))
    random.Random(seed).shuffle(segments)
    conn, sink = new()
    seg(conn, 0, isn, flags=SYN)
    for off, chunk in segments:
        seg(conn, 0, isn + 1 + off, chunk)
    seg(conn, 0, isn + 1 + len(data), flags=FIN | ACK)
    assert sink.out[0] and sink.gaps(0) == []
    assert sink.data(0) == data
    s = conn.streams[0]
    assert s.closed and s.delivered == len(data) and not s.pending


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(min_size=200, max_size=2000),
    points=st.lists(st.integers(0, 2000), min_size=2, max_size=20),
    isn=st.one_of(st.integers(0, M32), st.integers(M32 - 3000, M32)),
    seed=st.integers(0, 2**32),
)
def test_midstream_held_segments_start_at_lowest(
    data: bytes, points: list[int], isn: int, seed: int
) -> None:
    """Without a SYN, segments stored out of order within the hold window still reassemble."""
    segments = cut(data, points)[:8]
    data = b"".join(c for _, c in segments)
    random.Random(seed).shuffle(segments)
    conn, sink = new()
    for off, chunk in segments:
        seg(conn, 0, isn + off, chunk)
    conn.finish(0)
    assert sink.data(0) == data and sink.gaps(0) == []
    assert conn.streams[0].midstream


def test_never_filled_hole_is_one_gap_of_its_size() -> None:
    conn, sink = new()
    seg(conn, 0, 99, flags=SYN)
    seg(conn, 0, 100, b"aaaa")
    seg(conn, 0, 110, b"cccc")  # 104..110 never arrives
    seg(conn, 0, 114, b"dd")
    seg(conn, 0, 116, flags=FIN | ACK)
    conn.finish(0)
    assert sink.text(0) == b"aaaa<<gap 6>>ccccdd"
    s = conn.streams[0]
    assert (s.gaps, s.gap_bytes, s.delivered) == (1, 6, 10)


def test_bytes_missing_before_fin_are_a_trailing_gap() -> None:
    conn, sink = new()
    seg(conn, 0, 0, flags=SYN)
    seg(conn, 0, 1, b"hello")
    seg(conn, 0, 1 + 5 + 7, flags=FIN | ACK)  # 7 bytes never seen
    conn.finish(0)
    assert sink.text(0) == b"hello<<gap 7>>"


def test_bytes_acked_by_peer_but_never_seen_are_a_trailing_gap() -> None:
    conn, sink = new()
    seg(conn, 0, 0, flags=SYN)
    seg(conn, 1, 500, flags=SYN | ACK, ack=1)
    seg(conn, 0, 1, b"abc")
    seg(conn, 1, 501, ack=1 + 3 + 10)  # peer acknowledges 10 more bytes
    conn.finish(0)
    assert sink.text(0) == b"abc<<gap 10>>"


def test_snaplen_missing_bytes_are_gaps_and_merge() -> None:
    conn, sink = new()
    seg(conn, 0, 0, flags=SYN)
    seg(conn, 0, 1, b"ab", missing=3)
    seg(conn, 0, 6, b"", missing=4)  # nothing captured of this one
    seg(conn, 0, 10, b"xyz")
    conn.finish(0)
    assert sink.text(0) == b"ab<<gap 7>>xyz"
    assert conn.streams[0].gaps == 1


def test_first_copy_wins_on_conflicting_overlap() -> None:
    conn, sink = new()
    seg(conn, 0, 0, flags=SYN)
    seg(conn, 0, 5, b"WORLD")  # out of order, buffered first
    seg(conn, 0, 1, b"helloworld!")  # overlaps the buffered bytes with other content
    seg(conn, 0, 1, b"HELLO")  # retransmission of delivered bytes with other content
    conn.finish(0)
    assert sink.data(0) == b"hellWORLDd!"
    assert conn.streams[0].dup_bytes == 5 + 5


def test_sequence_wraparound_in_order_and_out_of_order() -> None:
    isn = M32 - 2
    conn, sink = new()
    seg(conn, 0, isn, flags=SYN)
    seg(conn, 0, isn + 1 + 4, b"EFGH")  # wraps past 2**32
    seg(conn, 0, isn + 1, b"ABCD")
    seg(conn, 0, isn + 1 + 8, b"IJ")
    conn.finish(0)
    assert sink.data(0) == b"ABCDEFGHIJ"


def test_stream_longer_than_4gib_of_sequence_space_keeps_going() -> None:
    conn, sink = new()
    seg(conn, 0, 7, flags=SYN)
    s = conn.streams[0]
    s.nxt = (1 << 32) * 3 - 4  # pretend 12 GiB already went by
    seq = (7 + 1 + s.nxt) & M32
    seg(conn, 0, seq, b"wxyz")
    seg(conn, 0, seq + 4, b"1234")
    assert sink.data(0) == b"wxyz1234"
    assert s.nxt == (1 << 32) * 3 + 4


def test_out_of_order_buffer_is_bounded_and_hole_becomes_gap() -> None:
    limits = ReassemblyLimits(max_pending_bytes=100)
    conn, sink = new(limits)
    seg(conn, 0, 0, flags=SYN)
    seg(conn, 0, 1, b"a" * 10)
    for i in range(5):  # 20 missing bytes, then 5 x 30 bytes waiting
        seg(conn, 0, 31 + 30 * i, bytes([66 + i]) * 30)
    s = conn.streams[0]
    assert s.pending_bytes <= 100
    assert sink.gaps(0) == [20]
    conn.finish(0)
    assert sink.data(0) == b"a" * 10 + b"".join(bytes([66 + i]) * 30 for i in range(5))
    assert limits.budget_left == ReassemblyLimits().budget_left


def test_table_wide_budget_forces_gaps() -> None:
    limits = ReassemblyLimits(budget_bytes=50)
    conn, sink = new(limits)
    seg(conn, 0, 0, flags=SYN)
    seg(conn, 0, 11, b"x" * 40)
    assert sink.out[0] == []
    seg(conn, 0, 51, b"y" * 40)  # budget exceeded: skip the hole
    assert sink.out[0] == [10, b"x" * 40, b"y" * 40]
    assert limits.budget_left == 50


def test_retransmitted_data_and_syn_are_not_duplicated() -> None:
    conn, sink = new()
    for _ in range(3):
        seg(conn, 0, 41, flags=SYN)
    seg(conn, 1, 900, flags=SYN | ACK, ack=42)
    for _ in range(2):
        seg(conn, 0, 42, b"GET / HTTP/1.0\r\n\r\n")
        seg(conn, 1, 901, b"HTTP/1.0 200 OK\r\n\r\n")
    assert sink.data(0) == b"GET / HTTP/1.0\r\n\r\n"
    assert sink.data(1) == b"HTTP/1.0 200 OK\r\n\r\n"


def test_synack_gives_both_initial_sequence_numbers() -> None:
    conn, sink = new()
    seg(conn, 0, 101, b"early")  # client data stored before the handshake
    seg(conn, 1, 700, flags=SYN | ACK, ack=101)
    seg(conn, 1, 701, b"reply")
    assert sink.data(0) == b"early" and sink.data(1) == b"reply"
    assert not conn.streams[0].midstream


def test_data_before_midstream_start_is_dropped_not_gapped() -> None:
    conn, sink = new(ReassemblyLimits(hold_packets=2))
    seg(conn, 0, 1000, b"later")
    seg(conn, 0, 1005, b"more!")  # hold window reached: start at 1000
    seg(conn, 0, 990, b"0123456789")  # before the start
    conn.finish(0)
    assert sink.text(0) == b"latermore!"
    assert conn.streams[0].before_start == 10


def test_fin_and_rst_close() -> None:
    conn, _ = new()
    seg(conn, 0, 0, flags=SYN)
    seg(conn, 1, 0, flags=SYN | ACK, ack=1)
    seg(conn, 0, 1, b"x", flags=FIN | ACK | PSH)
    assert conn.streams[0].closed and not conn.finished
    seg(conn, 1, 1, flags=FIN | ACK)
    assert conn.finished
    conn2, _ = new()
    seg(conn2, 0, 0, flags=SYN)
    seg(conn2, 1, 0, flags=RST)
    assert conn2.finished and conn2.rst


def test_fin_before_last_data_closes_when_data_arrives() -> None:
    conn, sink = new()
    seg(conn, 0, 0, flags=SYN)
    seg(conn, 0, 4, flags=FIN | ACK)
    assert not conn.streams[0].closed
    seg(conn, 0, 1, b"abc")
    assert conn.streams[0].closed and sink.data(0) == b"abc"


def test_stop_collecting_frees_buffers() -> None:
    limits = ReassemblyLimits()
    conn, sink = new(limits)
    seg(conn, 0, 0, flags=SYN)
    seg(conn, 0, 100, b"z" * 50)
    conn.stop_collecting()
    seg(conn, 0, 1, b"a" * 99)
    conn.finish(0)
    assert sink.out[0] == [] and limits.budget_left == ReassemblyLimits().budget_left
