"""libpcap's C functions through ctypes, for the paths that must not run Python per packet.

Two callers hand whole packet streams to libpcap with its own ``pcap_dump``
as the callback, exactly as ``tcpdump -w`` does: the capture's libpcap engine
(:mod:`bulk.capture.libpcap`, ``pcap_dispatch`` from the kernel ring) and
extraction's C loop (:mod:`bulk.extraction.native`, ``pcap_loop`` over a
trace file). Both load a library through :func:`load`, which gives every
function its C signature from one table, and share the structures, the libc
stdio calls and filter compilation here.

Which library: the capture loads the system's ``libpcap.so.0.8`` (Debian's
libpcap0.8, the one tcpdump links); extraction loads the one pcapy-ng is
linked with (``load(pcapy.__file__)`` resolves through pcapy's own shared
object), so its filters compile exactly as ``Reader.setfilter`` compiles
them on every other extract path.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

from bulk.errors import FilterError

ERRBUF_SIZE = 256  # PCAP_ERRBUF_SIZE
NETMASK_UNKNOWN = 0xFFFFFFFF  # PCAP_NETMASK_UNKNOWN
_IOFBF = 0  # glibc
_FSETLOCKING_BYCALLER = 2  # glibc's stdio_ext.h


class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class PktHdr(ctypes.Structure):
    """``struct pcap_pkthdr``."""

    _fields_ = [("ts", Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class Stat(ctypes.Structure):
    """``struct pcap_stat`` (the Linux fields)."""

    _fields_ = [
        ("ps_recv", ctypes.c_uint),
        ("ps_drop", ctypes.c_uint),
        ("ps_ifdrop", ctypes.c_uint),
    ]


class BpfProgram(ctypes.Structure):
    """``struct bpf_program``."""

    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


HANDLER = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.POINTER(PktHdr), ctypes.POINTER(ctypes.c_ubyte)
)

_P, _INT, _STR = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
_PROG = ctypes.POINTER(BpfProgram)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "pcap_create": (_P, [_STR, _STR]),
    "pcap_set_snaplen": (_INT, [_P, _INT]),
    "pcap_set_promisc": (_INT, [_P, _INT]),
    "pcap_set_timeout": (_INT, [_P, _INT]),
    "pcap_set_buffer_size": (_INT, [_P, _INT]),
    "pcap_activate": (_INT, [_P]),
    "pcap_open_dead": (_P, [_INT, _INT]),
    "pcap_fopen_offline": (_P, [_P, _STR]),
    "pcap_close": (None, [_P]),
    "pcap_geterr": (_STR, [_P]),
    "pcap_statustostr": (_STR, [_INT]),
    "pcap_compile": (_INT, [_P, _PROG, _STR, _INT, ctypes.c_uint32]),
    "pcap_setfilter": (_INT, [_P, _PROG]),
    "pcap_freecode": (None, [_PROG]),
    "pcap_setnonblock": (_INT, [_P, _INT, _STR]),
    "pcap_get_selectable_fd": (_INT, [_P]),
    "pcap_datalink": (_INT, [_P]),
    "pcap_snapshot": (_INT, [_P]),
    "pcap_stats": (_INT, [_P, ctypes.POINTER(Stat)]),
    "pcap_dispatch": (_INT, [_P, _INT, _P, _P]),
    "pcap_loop": (_INT, [_P, _INT, _P, _P]),
    "pcap_breakloop": (None, [_P]),
    "pcap_dump_fopen": (_P, [_P, _P]),
    "pcap_dump_ftell64": (ctypes.c_int64, [_P]),
    "pcap_dump_flush": (_INT, [_P]),
    "pcap_dump_close": (None, [_P]),
    "pcap_dump": (None, [_P, ctypes.POINTER(PktHdr), ctypes.POINTER(ctypes.c_ubyte)]),
    "bpf_filter": (ctypes.c_uint, [_P, _P, ctypes.c_uint, ctypes.c_uint]),
    "bpf_validate": (_INT, [_P, _INT]),
}


def load(name: str) -> ctypes.CDLL:
    """The library ``name`` (a soname or a path) with every function's C
    signature set. OSError when it cannot be loaded, AttributeError when it
    lacks a function (a libpcap older than 1.9)."""
    lib = ctypes.CDLL(name, use_errno=True)
    for fname, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, fname)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def address(fn: Any) -> int:
    """The address of one of a library's C functions (0: none), for C code
    that calls it through a function pointer."""
    return int(ctypes.cast(fn, ctypes.c_void_p).value or 0)


def dump_callback(lib: ctypes.CDLL) -> int:
    """The address of the library's own ``pcap_dump``, to pass as the callback
    of ``pcap_dispatch``/``pcap_loop``: no Python runs per packet."""
    return address(lib.pcap_dump)


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library's stdio calls the dumpers and readers are given."""
    c = ctypes.CDLL(None, use_errno=True)
    for fname, restype, argtypes in (
        ("fdopen", _P, [_INT, _STR]),
        ("fclose", _INT, [_P]),
        ("setvbuf", _INT, [_P, _P, _INT, ctypes.c_size_t]),
        ("__fsetlocking", _INT, [_P, _INT]),
    ):
        fn = getattr(c, fname)
        fn.restype = restype
        fn.argtypes = argtypes
    return c


def fdopen(fd: int, mode: bytes, buf: Any = None, *, one_thread: bool = False) -> int:
    """A stdio stream owning ``fd`` (closed here if that fails: OSError),
    buffered by ``buf`` when given (glibc ignores the size given to setvbuf
    without a buffer; the caller keeps ``buf`` alive as long as the stream).
    ``one_thread``: only one thread ever uses the stream, so glibc need not
    lock it at every call."""
    c = libc()
    fp = c.fdopen(fd, mode)
    if not fp:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, os.strerror(err))
    if buf is not None:
        c.setvbuf(fp, buf, _IOFBF, len(buf))
    if one_thread:
        # No lock per call (glibc locks every stdio call once the process has
        # a second thread: two calls per packet in a pcap_loop).
        c.__fsetlocking(fp, _FSETLOCKING_BYCALLER)
    return int(fp)


def text(raw: bytes | None) -> str:
    """A message of libpcap's as one line of text."""
    return (raw or b"").decode(errors="replace").strip()


def set_filter(lib: ctypes.CDLL, handle: int, expression: str, netmask: int) -> None:
    """Compile ``expression`` (optimised) and set it on ``handle``; a bad
    filter raises FilterError with libpcap's own message."""
    prog = BpfProgram()
    if lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1, netmask) != 0:
        raise FilterError(f"bad filter {expression!r}: {text(lib.pcap_geterr(handle))}")
    try:
        if lib.pcap_setfilter(handle, ctypes.byref(prog)) != 0:
            raise FilterError(f"bad filter {expression!r}: {text(lib.pcap_geterr(handle))}")
    finally:
        lib.pcap_freecode(ctypes.byref(prog))
