"""libpcap's own read, filter and write loop, run entirely in C, as tcpdump runs it.

pcapy-ng's ``loop`` calls back into Python for every matching packet (a header
object and a bytes object each, about 1 us). Here ``pcap_loop`` is given
libpcap's own ``pcap_dump`` as its callback (through ctypes), so no Python
object is made per packet, matching or not. Two stdio buffers of 1 MiB
replace libpcap's default (the file's block size, 4 KiB, one read system call
each): the system time of a scan, the larger part of it, drops accordingly.

The library is the one pcapy-ng is linked with, found through pcapy's own
shared object: the filter is compiled exactly as ``Reader.setfilter`` does
(optimised, netmask 0), so every path of ``bulk extract`` gives the same
result. Each loop runs in a worker thread (ctypes releases the GIL) while the
calling thread waits: Ctrl-C stops the loop (``pcap_breakloop``), and the
progress display is drawn meanwhile.

Writes: the dumper writes the output's pcap header (checked to be the one
the plan needs) and then the records of every trace looped over, in turn.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any

from bulk.errors import BulkError, FilterError

BUFFER = 1 << 20
_IOFBF = 0  # glibc
_FSETLOCKING_BYCALLER = 2  # glibc's stdio_ext.h
_ERRBUF = 256  # PCAP_ERRBUF_SIZE
_LOOP_ERROR = -1
_LOOP_BROKEN = -2
# pcap LINKTYPE -> DLT where they differ on Linux (libpcap's pcap-common.c).
_LINKTYPE_TO_DLT = {101: 12, 100: 11, 117: 17}
_WAIT_S = 0.25


class _Program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _Lib:
    """The libpcap and libc functions used, with their C signatures."""

    def __init__(self) -> None:
        import pcapy  # noqa: PLC0415 - the library pcapy-ng loaded

        pcap = ctypes.CDLL(pcapy.__file__, use_errno=True)
        libc = ctypes.CDLL(None, use_errno=True)
        vp, ip, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        prog = ctypes.POINTER(_Program)

        def fn(lib: Any, name: str, restype: Any, *argtypes: Any) -> Any:
            f = getattr(lib, name)
            f.restype = restype
            f.argtypes = list(argtypes)
            return f

        self.fdopen = fn(libc, "fdopen", vp, ip, cp)
        self.setvbuf = fn(libc, "setvbuf", ip, vp, vp, ip, ctypes.c_size_t)
        self.fclose = fn(libc, "fclose", ip, vp)
        self.fsetlocking = fn(libc, "__fsetlocking", ip, vp, ip)
        self.fopen_offline = fn(pcap, "pcap_fopen_offline", vp, vp, cp)
        self.open_dead = fn(pcap, "pcap_open_dead", vp, ip, ip)
        self.compile = fn(pcap, "pcap_compile", ip, vp, prog, cp, ip, ctypes.c_uint32)
        self.setfilter = fn(pcap, "pcap_setfilter", ip, vp, prog)
        self.freecode = fn(pcap, "pcap_freecode", None, prog)
        self.geterr = fn(pcap, "pcap_geterr", cp, vp)
        self.close = fn(pcap, "pcap_close", None, vp)
        self.loop = fn(pcap, "pcap_loop", ip, vp, ip, vp, vp)
        self.breakloop = fn(pcap, "pcap_breakloop", None, vp)
        self.dump_fopen = fn(pcap, "pcap_dump_fopen", vp, vp, vp)
        self.dump_flush = fn(pcap, "pcap_dump_flush", ip, vp)
        self.dump_close = fn(pcap, "pcap_dump_close", None, vp)
        self.dump = ctypes.cast(pcap.pcap_dump, vp).value


_lib: _Lib | None = None
_failed = False


def lib() -> _Lib | None:
    """The C functions, or None where they cannot be found (then callers use pcapy)."""
    global _lib, _failed  # noqa: PLW0603 - loaded once per process
    if _lib is None and not _failed:
        try:
            _lib = _Lib()
        except (OSError, AttributeError):
            _failed = True
    return _lib


def _fdopen(c: _Lib, fd: int, mode: bytes, buf: Any = None) -> int:
    """A stdio stream on ``fd``, buffered by ``buf`` (glibc ignores the size
    given to setvbuf without a buffer); the caller keeps ``buf`` alive."""
    fp = c.fdopen(fd, mode)
    if not fp:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, os.strerror(err))
    if buf is not None:
        c.setvbuf(fp, buf, _IOFBF, len(buf))
    # One thread at a time uses the stream: no lock per fread (glibc locks every
    # call once the process has a second thread, two calls per packet here).
    c.fsetlocking(fp, _FSETLOCKING_BYCALLER)
    return int(fp)


def _header_of(c: _Lib, dead: int) -> bytes:
    """The file header libpcap's dumper writes for ``dead``."""
    fd = os.memfd_create("bulk-extract-header")
    try:
        fp = _fdopen(c, os.dup(fd), b"wb")
        dumper = c.dump_fopen(dead, fp)
        if not dumper:
            c.fclose(fp)
            return b""
        c.dump_close(dumper)
        return os.pread(fd, 24, 0)
    finally:
        os.close(fd)


class Dumper:
    """libpcap's dumper on a duplicate of ``fd``: writes the pcap header of
    (``linktype``, ``snaplen``), microsecond, then the records of every
    :meth:`copy`. Not usable (``open`` returns None) if the header libpcap would
    write is not ``header``."""

    def __init__(self, c: _Lib, dead: int, dumper: int, target: str, write_buf: Any) -> None:
        self._c = c
        self._write_buf = write_buf  # the output stream's buffer, until dump_close
        self._dead = dead
        self._dumper: int | None = dumper
        self._target = target
        self._read_buf = ctypes.create_string_buffer(BUFFER)

    @classmethod
    def open(
        cls, fd: int, linktype: int, snaplen: int, header: bytes, target: str
    ) -> Dumper | None:
        c = lib()
        if c is None:
            return None
        dead = c.open_dead(_LINKTYPE_TO_DLT.get(linktype, linktype), snaplen)
        if not dead:
            return None
        try:
            if _header_of(c, dead) != header:
                c.close(dead)
                return None
            write_buf = ctypes.create_string_buffer(BUFFER)
            fp = _fdopen(c, os.dup(fd), b"wb", write_buf)
            dumper = c.dump_fopen(dead, fp)
        except OSError:
            c.close(dead)
            return None
        if not dumper:
            c.fclose(fp)
            c.close(dead)
            return None
        return cls(c, dead, dumper, target, write_buf)

    def copy(
        self, path: str, expression: str, tick: Callable[[int], None] | None = None
    ) -> str | None:
        """Append the packets of the trace at ``path`` matching ``expression``.

        Returns libpcap's message if the trace cannot be opened or ends in
        damage (every whole packet before it is written), else None. A bad
        filter raises FilterError; a failed write raises OSError. ``tick(bytes
        read)`` is called about every 0.25 s while the loop runs.
        """
        c = self._c
        assert self._dumper is not None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            return f"{exc.strerror or exc}"
        fp = _fdopen(c, fd, b"rb", self._read_buf)  # one trace at a time
        err = ctypes.create_string_buffer(_ERRBUF)
        handle = c.fopen_offline(fp, err)
        if not handle:
            c.fclose(fp)
            return err.value.decode(errors="replace")
        try:
            if expression:
                prog = _Program()
                if c.compile(handle, ctypes.byref(prog), expression.encode(), 1, 0) != 0:
                    msg = (c.geterr(handle) or b"").decode(errors="replace")
                    raise FilterError(f"bad filter {expression!r}: {msg}")
                status = c.setfilter(handle, ctypes.byref(prog))
                c.freecode(ctypes.byref(prog))
                if status != 0:
                    msg = (c.geterr(handle) or b"").decode(errors="replace")
                    raise FilterError(f"bad filter {expression!r}: {msg}")
            result = self._run(handle, fd, tick)
            if result == _LOOP_ERROR:
                return (c.geterr(handle) or b"").decode(errors="replace")
            return None
        finally:
            c.close(handle)  # closes fp and fd
            self._check_write()

    def _run(self, handle: int, fd: int, tick: Callable[[int], None] | None) -> int:
        c = self._c
        result: list[int] = []
        done = threading.Event()  # not Thread.join: an interrupted join may return early

        def work() -> None:
            try:
                result.append(c.loop(handle, -1, c.dump, self._dumper))
            finally:
                done.set()

        threading.Thread(target=work, name="bulk-extract-loop", daemon=True).start()
        try:
            while not done.wait(_WAIT_S):
                if tick is not None:
                    try:
                        tick(os.lseek(fd, 0, os.SEEK_CUR))
                    except OSError:
                        pass
        except BaseException:
            c.breakloop(handle)
            while not done.is_set():  # the handle is closed after the loop ends only
                try:
                    done.wait(_WAIT_S)
                except KeyboardInterrupt:
                    continue
            raise
        return result[0] if result else _LOOP_ERROR

    def _check_write(self) -> None:
        if self._dumper is not None and self._c.dump_flush(self._dumper) != 0:
            self._fail()

    def _fail(self) -> None:
        err = ctypes.get_errno()
        self.close()
        if err == 32:  # EPIPE: the reader went away
            raise BrokenPipeError(err, os.strerror(err))
        raise BulkError(f"cannot write {self._target}: {os.strerror(err) if err else 'error'}")

    def flush(self) -> None:
        """Push what the dumper holds to the file (before writing to it otherwise)."""
        self._check_write()

    def close(self) -> None:
        if self._dumper is not None:
            self._c.dump_close(self._dumper)
            self._dumper = None
            self._c.close(self._dead)
