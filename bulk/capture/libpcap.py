"""The system libpcap through ctypes: the capture's per-packet path in pure C.

``pcap_dispatch(p, cnt, pcap_dump, dumper)`` with libpcap's own ``pcap_dump``
as the callback is exactly what ``tcpdump -w`` does: libpcap copies each
packet from the kernel ring to the dumper's stdio buffer with no Python (and
no Python object) per packet; Python runs once per dispatch call. The library
is Debian's libpcap0.8 (``libpcap.so.0.8``, the one tcpdump links to); when it
cannot be loaded the capture falls back to the pcapy-ng engine
(:mod:`bulk.capture.handle`).

:class:`LiveHandle` offers the few methods of a pcapy-ng reader that the
capture loop uses (``dispatch``, ``stats``, ``getfd``, ``datalink``,
``close``, ``dump_open``), plus :meth:`LiveHandle.dump_all`, the C path.
Failures raise :class:`PcapError` (a ``pcapy.PcapError``) with libpcap's own
message, so the loop handles both engines alike.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pcapy

from bulk.capture.options import CaptureOptions
from bulk.errors import CaptureError
from bulk.trace import libpcap as clib

LIBRARY = "libpcap.so.0.8"
_SOL_PACKET = 263
_PACKET_FANOUT = 18
_PACKET_FANOUT_HASH = 0
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")
LINK_CHECK_S = 0.01  # at most this often (a dispatch that returns nothing asks)


class PcapError(pcapy.PcapError):  # type: ignore[misc]
    """A libpcap failure, with libpcap's message."""


@functools.cache
def _open() -> ctypes.CDLL | str:
    """The library with its prototypes set, or why it cannot be loaded (once)."""
    try:
        return clib.load(LIBRARY)
    except (OSError, AttributeError) as exc:
        return str(exc)


def load() -> ctypes.CDLL:
    """The library; CaptureError when it cannot be loaded."""
    lib = _open()
    if isinstance(lib, str):
        raise CaptureError(f"{LIBRARY}: cannot load: {lib}")
    return lib


def available() -> bool:
    try:
        load()
    except CaptureError:
        return False
    return True


class Dumper:
    """A ``pcap_dumper_t`` writing one file (libpcap's stdio buffer in front)."""

    def __init__(self, lib: ctypes.CDLL, ptr: int, path: str) -> None:
        self._lib = lib
        self.ptr: int | None = ptr
        self.path = path

    def ftell(self) -> int:
        """The file's length including what is still buffered: a record boundary
        between two dispatch calls."""
        assert self.ptr is not None
        return int(self._lib.pcap_dump_ftell64(self.ptr))

    def flush(self) -> None:
        assert self.ptr is not None
        if self._lib.pcap_dump_flush(self.ptr) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), self.path)

    def dump(self, hdr: Any, data: Any) -> None:
        """One packet (the slow path: only the fanout's first second uses it)."""
        assert self.ptr is not None
        self._lib.pcap_dump(self.ptr, hdr, data)

    def close(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            self._lib.pcap_dump_close(ptr)


class LiveHandle:
    """An activated, non-blocking ``pcap_t`` on an interface."""

    def __init__(self, lib: ctypes.CDLL, ptr: int, interface: str) -> None:
        self._lib = lib
        self.ptr: int | None = ptr
        self.interface = interface
        self._dump_fn = clib.dump_callback(lib)
        self._stat = clib.Stat()
        self._next_check = 0.0
        self._ifreq: socket.socket | None = None  # for SIOCGIFFLAGS

    engine = "libpcap"

    def _error(self) -> PcapError:
        assert self.ptr is not None
        return PcapError(clib.text(self._lib.pcap_geterr(self.ptr)) or "capture failed")

    def dump_all(self, cnt: int, dumper: Dumper) -> int:
        """``pcap_dispatch(p, cnt, pcap_dump, dumper)``: up to ``cnt`` packets
        straight from the ring into the file. Returns how many."""
        if self.ptr is None:
            raise PcapError("handle closed")
        n = int(self._lib.pcap_dispatch(self.ptr, cnt, self._dump_fn, dumper.ptr))
        if n < 0:
            raise self._error()
        if n == 0:
            self._check_link()
        return n

    def _check_link(self) -> None:
        """Raise PcapError when the interface is down or gone (asked when a
        dispatch returns nothing: the poll woke up for an error, a timer or
        a signal, never per packet).

        libpcap 1.10 keeps a handle on an interface that went down (it
        captures again when it is up) instead of failing as 1.9 did; the
        capture closes its file on a link down and logs the gap, so it asks."""
        now = time.monotonic()
        if now < self._next_check or self.interface == "any":
            return
        self._next_check = now + LINK_CHECK_S
        try:
            if self._ifreq is None:
                self._ifreq = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            req = fcntl.ioctl(self._ifreq, _SIOCGIFFLAGS, _IFREQ.pack(self.interface.encode(), 0))
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                raise PcapError("The interface disappeared") from None
            return
        if not _IFREQ.unpack(req)[1] & _IFF_UP:
            raise PcapError("The interface went down")

    def dispatch(self, cnt: int, callback: Callable[[Any, Any], None]) -> int:
        """Packets to a Python ``callback(hdr, data)`` (pointers to libpcap's
        header and bytes, valid during the call only)."""
        if self.ptr is None:
            raise PcapError("handle closed")

        def call(_user: Any, hdr: Any, data: Any) -> None:
            callback(hdr, data)

        fn = clib.HANDLER(call)
        n = int(self._lib.pcap_dispatch(self.ptr, cnt, ctypes.cast(fn, ctypes.c_void_p), None))
        if n < 0:
            raise self._error()
        if n == 0:
            self._check_link()
        return n

    def dump_open(self, path: str) -> Dumper:
        """A dumper on ``path``, an empty file the capture has just created.

        Opened without truncation (``pcap_dump_open`` would ``fopen(path,
        "w")``): on ext4 truncating a file, even an empty one, arms "auto
        da_alloc", and closing it after writing hundreds of MB then flushes
        them all from inside the capture's close call (the rotation stalled
        the capture and the ring overflowed)."""
        if self.ptr is None:
            raise PcapError("handle closed")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise PcapError(f"{path}: {exc.strerror}") from None
        try:
            fp = clib.fdopen(fd, b"wb")
        except OSError as exc:
            raise PcapError(f"{path}: {exc.strerror}") from None
        ptr = self._lib.pcap_dump_fopen(self.ptr, fp)
        if not ptr:
            clib.libc().fclose(fp)
            raise self._error()
        return Dumper(self._lib, ptr, path)

    def stats(self) -> tuple[int, int, int]:
        if self.ptr is None:
            raise PcapError("handle closed")
        if self._lib.pcap_stats(self.ptr, ctypes.byref(self._stat)) != 0:
            raise self._error()
        s = self._stat
        return int(s.ps_recv), int(s.ps_drop), int(s.ps_ifdrop)

    def getfd(self) -> int:
        assert self.ptr is not None
        return int(self._lib.pcap_get_selectable_fd(self.ptr))

    def datalink(self) -> int:
        assert self.ptr is not None
        return int(self._lib.pcap_datalink(self.ptr))

    def set_fanout(self, group: int, kind: int = _PACKET_FANOUT_HASH) -> None:
        """Join a PACKET_FANOUT group through the handle's socket."""
        sock = socket.socket(fileno=self.getfd())
        try:
            sock.setsockopt(_SOL_PACKET, _PACKET_FANOUT, (group & 0xFFFF) | (kind << 16))
        finally:
            sock.detach()

    def close(self) -> None:
        if self._ifreq is not None:
            self._ifreq.close()
            self._ifreq = None
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            self._lib.pcap_close(ptr)


def open_live(opts: CaptureOptions) -> LiveHandle:
    """An activated, filtered, non-blocking handle on ``opts.interface``."""
    lib = load()
    iface = opts.interface
    errbuf = ctypes.create_string_buffer(clib.ERRBUF_SIZE)
    ptr = lib.pcap_create(iface.encode(), errbuf)
    if not ptr:
        raise CaptureError(f"{iface}: {clib.text(errbuf.value)}")
    handle = LiveHandle(lib, ptr, iface)
    try:
        lib.pcap_set_snaplen(ptr, opts.snaplen)
        lib.pcap_set_promisc(ptr, int(opts.promisc))
        lib.pcap_set_timeout(ptr, opts.timeout_ms)
        lib.pcap_set_buffer_size(ptr, opts.buffer_size)
        status = int(lib.pcap_activate(ptr))
        if status < 0:
            raise CaptureError(f"{iface}: {_activate_message(lib, ptr, status)}")
        if opts.bpf:
            clib.set_filter(lib, ptr, opts.bpf, clib.NETMASK_UNKNOWN)
        if lib.pcap_setnonblock(ptr, 1, errbuf) != 0:
            raise CaptureError(f"{iface}: {clib.text(errbuf.value)}")
    except BaseException:
        handle.close()
        raise
    return handle


def _activate_message(lib: ctypes.CDLL, ptr: int, status: int) -> str:
    """libpcap's message for a failed activation: pcap_geterr() when it says
    more than the status, else pcap_statustostr()."""
    reason = clib.text(lib.pcap_statustostr(status))
    detail = clib.text(lib.pcap_geterr(ptr))
    if status in (-8, -11):  # PCAP_ERROR_PERM_DENIED, PCAP_ERROR_PROMISC_PERM_DENIED
        return f"{detail or reason}: needs root or CAP_NET_RAW and CAP_NET_ADMIN"
    if status == -1 and detail:  # PCAP_ERROR: the message says what failed
        return detail
    return reason
