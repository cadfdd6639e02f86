"""The packet gate of `bulk backdoor`'s fast path, in Python: the twin of ``bulk._flowgate``.

A gate reads one classic pcap file after another (``open`` then iterate) and
yields ``(ts_ns, wirelen, data)`` for the packets the backdoor analysis needs,
in file order; the others never become Python objects in the C version. It
also holds the *done set*: the raw address and port bytes of both directions
of every connection the analyzer has decided (``add`` / ``discard``), whose
further packets (never a SYN) are skipped at the moment they would be
yielded. What is selected is documented in ``csrc/flowgate.c``; this module
does exactly the same, slowly (``BULK_NO_NATIVE=1``, or no C compiler).

:func:`prepare` reads and checks a file's header and :func:`programs` compiles
the BPF programs a file needs (libpcap's compiler, through pcapy-ng) into
packed ``struct bpf_insn`` arrays, for both versions. Both run them with
libpcap's own ``bpf_filter`` (the one its savefile reader runs) from the
library that compiled them, whose address :func:`bpf_functions` gives: the C
gate through a function pointer, this twin through ctypes.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

from bulk.trace.bpf import compile_bpf

CHUNK = 1 << 20
MAX_CAPLEN = 262144  # libpcap's maximum for the link types the gate reads
COUNTS_MAX = 1 << 19  # flow directions counted per file before the counts start again
_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D

Insn = tuple[int, int, int, int]
_INSN = struct.Struct("=HBBI")  # struct bpf_insn: code, jt, jf, k (8 bytes)
# The codes libpcap's bpf_filter runs (its bpf_validate lets others through, on
# which bpf_filter aborts: see known_code in csrc/flowgate.c).
_KNOWN_CODES = frozenset(
    (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x0C, 0x14, 0x15, 0x16, 0x1C, 0x1D, 0x20,
     0x24, 0x25, 0x28, 0x2C, 0x2D, 0x30, 0x34, 0x35, 0x3C, 0x3D, 0x40, 0x44, 0x45, 0x48, 0x4C,
     0x4D, 0x50, 0x54, 0x5C, 0x60, 0x61, 0x64, 0x6C, 0x74, 0x7C, 0x80, 0x81, 0x84, 0x87, 0x94,
     0x9C, 0xA4, 0xAC, 0xB1)
)  # fmt: skip


class TruncatedError(Exception):
    """The file ends inside a record (libpcap's message)."""


class CorruptError(Exception):
    """A record's captured length is impossible (libpcap's message)."""


class FileHeader(NamedTuple):
    swapped: bool  # big-endian file: records need byte swapping (little-endian host)
    nsec: bool
    snaplen: int
    linktype: int


def prepare(fd: int) -> FileHeader | None:
    """The header of the classic pcap file open on ``fd``; None when it is not
    one (pcapng, compressed, too short: the caller takes another path)."""
    head = os.pread(fd, 24, 0)
    if len(head) < 24:
        return None
    for order in ("<", ">"):
        magic, _maj, _min, _zone, _sig, snaplen, network = struct.unpack(order + "IHHiIII", head)
        if magic in (_MAGIC_US, _MAGIC_NS):
            return FileHeader(order == ">", magic == _MAGIC_NS, snaplen, network & 0xFFFF)
    return None


def prepare_path(path: str | os.PathLike[str]) -> FileHeader | None:
    """:func:`prepare` on the file at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return prepare(fd)
    finally:
        os.close(fd)


def pack(insns: list[Insn]) -> bytes:
    """A program as the ``struct bpf_insn`` array libpcap's ``bpf_filter`` runs."""
    return b"".join(_INSN.pack(*i) for i in insns)


def programs(expressions: list[str | None], linktype: int) -> list[bytes | None]:
    """Each expression compiled by libpcap for ``linktype``, packed (None stays None)."""
    return [None if e is None else pack(compile_bpf(e, linktype).get_bpf()) for e in expressions]


class BpfFunctions(NamedTuple):
    """Addresses of two functions of libpcap's, what ``open`` is given to run programs with."""

    bpf_filter: int  # u_int bpf_filter(const struct bpf_insn *, const u_char *, u_int, u_int)
    bpf_validate: int  # int bpf_validate(const struct bpf_insn *, int)


@functools.cache
def bpf_functions() -> BpfFunctions:
    """``bpf_filter`` and ``bpf_validate`` of the libpcap pcapy-ng is linked with
    (the one whose ``pcap_compile`` made the programs)."""
    import pcapy  # noqa: PLC0415 - ctypes only where a classic pcap file is read

    from bulk.trace import libpcap  # noqa: PLC0415

    lib = libpcap.load(pcapy.__file__)
    return BpfFunctions(libpcap.address(lib.bpf_filter), libpcap.address(lib.bpf_validate))


@functools.cache
def _callers(fns: BpfFunctions) -> tuple[Callable[..., int], Callable[..., int]]:
    """The two functions at those addresses, callable from Python (ctypes)."""
    import ctypes  # noqa: PLC0415

    ptr, uint = ctypes.c_char_p, ctypes.c_uint
    run = ctypes.CFUNCTYPE(uint, ptr, ptr, uint, uint)(fns.bpf_filter)
    validate = ctypes.CFUNCTYPE(ctypes.c_int, ptr, ctypes.c_int)(fns.bpf_validate)
    return run, validate


def _program(prog: bytes | None, validate: Callable[..., int]) -> bytes | None:
    """The C gate's checks of a packed program: a whole number of instructions,
    1 to 4096 of them, codes ``bpf_filter`` knows, and libpcap's
    ``bpf_validate`` accepts it."""
    if prog is None:
        return None
    prog = bytes(prog)
    n, rest = divmod(len(prog), _INSN.size)
    if rest or not 1 <= n <= 4096:
        raise ValueError("a BPF program is 1 to 4096 packed struct bpf_insn (8 bytes each)")
    for i, (code, _jt, _jf, _k) in enumerate(_INSN.iter_unpack(prog)):
        if code not in _KNOWN_CODES:
            raise ValueError(f"BPF instruction {i}: libpcap's bpf_filter has no code {code:#x}")
    if not validate(prog, n):
        raise ValueError("libpcap's bpf_validate refuses the BPF program")
    return prog


def flow_key(p: bytes, l2: int) -> bytes | None:
    """pcapy-ng's IPv4 flow key of one direction (see csrc/flowgate.c), or None."""
    n = len(p)
    tags = 0
    while True:
        if n < l2 + 20:
            return None
        if p[l2] >> 4 == 4:
            break
        if tags >= 2 or l2 < 2:
            return None
        if p[l2 - 2 : l2] in (b"\x81\x00", b"\x88\xa8"):
            l2 += 4
            tags += 1
        else:
            return None
    ihl = (p[l2] & 0x0F) * 4
    proto = p[l2 + 9]
    if ihl < 20 or proto not in (6, 17) or n < l2 + ihl + 4:
        return None
    return p[l2 + 12 : l2 + 20] + p[l2 + ihl : l2 + ihl + 4] + bytes([proto])


class Gate:
    """The Python twin of ``bulk._flowgate.Gate``: same calls, same packets."""

    def __init__(self) -> None:
        self._done: set[bytes] = set()
        self._iter: Iterator[tuple[int, int, bytes]] | None = None
        self._stats = {"records": 0, "candidates": 0, "delivered": 0, "skipped": 0}

    def add(self, key: bytes) -> None:
        self._check(key)
        self._done.add(bytes(key))

    def discard(self, key: bytes) -> None:
        self._check(key)
        self._done.discard(bytes(key))

    @staticmethod
    def _check(key: bytes) -> None:
        if not 1 <= len(key) <= 36:
            raise ValueError("a done-set key has 1 to 36 bytes")

    def __contains__(self, key: bytes) -> bool:
        return key in self._done

    def __len__(self) -> int:
        return len(self._done)

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def open(  # noqa: PLR0917 - the C signature
        self,
        fd: int,
        swapped: bool,
        nsec: bool,
        snaplen: int,
        l2: int,
        et_off: int,
        cutoff: int,
        heads: bytes | None,
        other: bytes | None,
        fns: BpfFunctions | tuple[int, int],
        counts_max: int = COUNTS_MAX,
    ) -> None:
        fns = BpfFunctions(*fns)
        if not fns.bpf_filter or not fns.bpf_validate:
            raise ValueError("no address of libpcap's bpf_filter or bpf_validate")
        self._iter = None
        run, validate = _callers(fns)
        heads = _program(heads, validate)
        other = _program(other, validate)
        if l2 >= 0 and (heads is None or other is None):
            raise ValueError("a known link layer needs both programs")
        snapshot = MAX_CAPLEN if snaplen == 0 or snaplen > MAX_CAPLEN else snaplen
        self._iter = self._packets(
            fd, swapped, nsec, snapshot, l2, et_off, cutoff, heads, other, counts_max, run
        )

    def close(self) -> None:
        """Forget the open file (its descriptor stays the caller's to close)."""
        self._iter = None

    def __iter__(self) -> Gate:
        return self

    def __next__(self) -> tuple[int, int, bytes]:
        if self._iter is None:
            raise StopIteration
        try:
            return next(self._iter)
        except BaseException:
            self._iter = None
            raise

    def _done_key(self, p: bytes, l2: int, et_off: int) -> bytes | None:
        """The done-set key of a non-SYN packet (None: SYN, or not of that shape)."""
        n = len(p)
        if n >= l2 + 24 and p[l2] == 0x45 and (et_off < 0 or p[et_off : et_off + 2] == b"\x08\x00"):
            if n > l2 + 33 and p[l2 + 33] & 0x02:
                return None
            return p[l2 + 12 : l2 + 24]
        if (
            n >= l2 + 44
            and p[l2] & 0xF0 == 0x60
            and p[l2 + 6] == 6
            and (et_off < 0 or p[et_off : et_off + 2] == b"\x86\xdd")
        ):
            if n > l2 + 53 and p[l2 + 53] & 0x02:
                return None
            return p[l2 + 8 : l2 + 44]
        return None

    def _packets(  # noqa: PLR0917
        self,
        fd: int,
        swapped: bool,
        nsec: bool,
        snapshot: int,
        l2: int,
        et_off: int,
        cutoff: int,
        heads: bytes | None,
        other: bytes | None,
        counts_max: int,
        bpf: Callable[[bytes | None, bytes, int, int], int],
    ) -> Iterator[tuple[int, int, bytes]]:
        header = struct.Struct(">IIII" if swapped else "<IIII").unpack_from
        frac_ns = 1 if nsec else 1000
        counts: dict[bytes, int] = {}
        stats = self._stats
        done = self._done
        offset = 24
        buf = b""
        while True:
            more = os.pread(fd, CHUNK, offset)
            offset += len(more)
            buf += more
            pos = 0
            error: Exception | None = None
            cands = []
            while len(buf) - pos >= 16:
                sec, frac, caplen, wirelen = header(buf, pos)
                if caplen > MAX_CAPLEN:
                    if snapshot < MAX_CAPLEN:
                        why = f"bigger than snaplen of {snapshot}"
                    else:
                        why = f"bigger than maximum of {MAX_CAPLEN}"
                    error = CorruptError(f"invalid packet capture length {caplen}, {why}")
                    break
                if len(buf) - pos - 16 < caplen:
                    break
                stats["records"] += 1
                data = buf[pos + 16 : pos + 16 + min(caplen, snapshot)]
                pos += 16 + caplen
                if l2 < 0:
                    take = other is None or bpf(other, data, wirelen, len(data)) != 0
                else:
                    key = flow_key(data, l2)
                    if key is not None:
                        take = False
                        if bpf(heads, data, wirelen, len(data)) != 0:
                            before = counts.get(key)
                            if before is None:
                                before = 0
                                if len(counts) >= counts_max:
                                    counts.clear()  # memory stays bounded
                            counts[key] = before + 1
                            take = before < cutoff
                    else:
                        take = bpf(other, data, wirelen, len(data)) != 0
                if take:
                    cands.append((sec * 1_000_000_000 + frac * frac_ns, wirelen, data))
            stats["candidates"] += len(cands)
            for cand in cands:
                if l2 >= 0 and done:
                    k = self._done_key(cand[2], l2, et_off)
                    if k is not None and k in done:
                        stats["skipped"] += 1
                        continue
                stats["delivered"] += 1
                yield cand
            if error is not None:
                raise error
            buf = buf[pos:]
            if not more:
                if buf:
                    if len(buf) < 16:
                        raise TruncatedError(
                            f"truncated dump file; tried to read 16 header bytes, "
                            f"only got {len(buf)}"
                        )
                    want = min(header(buf, 0)[2], snapshot)
                    got = min(len(buf) - 16, want)
                    raise TruncatedError(
                        f"truncated dump file; tried to read {want} captured bytes, only got {got}"
                    )
                return
