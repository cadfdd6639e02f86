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

from bulk.errors import BulkError
from bulk.trace import libpcap

BUFFER = 1 << 20
_LOOP_ERROR = -1
_LOOP_BROKEN = -2
# pcap LINKTYPE -> DLT where they differ on Linux (libpcap's pcap-common.c).
_LINKTYPE_TO_DLT = {101: 12, 100: 11, 117: 17}
_WAIT_S = 0.25


class _Lib:
    """The library pcapy-ng is linked with, and the address of its ``pcap_dump``."""

    def __init__(self) -> None:
        import pcapy  # noqa: PLC0415 - the library pcapy-ng loaded

        self.pcap = libpcap.load(pcapy.__file__)
        self.dump = libpcap.dump_callback(self.pcap)


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


def _header_of(c: _Lib, dead: int) -> bytes:
    """The file header libpcap's dumper writes for ``dead``."""
    fd = os.memfd_create("bulk-extract-header")
    try:
        fp = libpcap.fdopen(os.dup(fd), b"wb", one_thread=True)
        dumper = c.pcap.pcap_dump_fopen(dead, fp)
        if not dumper:
            libpcap.libc().fclose(fp)
            return b""
        c.pcap.pcap_dump_close(dumper)
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
        dead = c.pcap.pcap_open_dead(_LINKTYPE_TO_DLT.get(linktype, linktype), snaplen)
        if not dead:
            return None
        try:
            if _header_of(c, dead) != header:
                c.pcap.pcap_close(dead)
                return None
            write_buf = ctypes.create_string_buffer(BUFFER)
            fp = libpcap.fdopen(os.dup(fd), b"wb", write_buf, one_thread=True)
            dumper = c.pcap.pcap_dump_fopen(dead, fp)
        except OSError:
            c.pcap.pcap_close(dead)
            return None
        if not dumper:
            libpcap.libc().fclose(fp)
            c.pcap.pcap_close(dead)
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
        fp = libpcap.fdopen(fd, b"rb", self._read_buf, one_thread=True)  # one trace at a time
        err = ctypes.create_string_buffer(libpcap.ERRBUF_SIZE)
        handle = c.pcap.pcap_fopen_offline(fp, err)
        if not handle:
            libpcap.libc().fclose(fp)
            return err.value.decode(errors="replace")
        try:
            if expression:
                libpcap.set_filter(c.pcap, handle, expression, 0)  # netmask 0, as pcapy's setfilter
            result = self._run(handle, fd, tick)
            if result == _LOOP_ERROR:
                return libpcap.text(c.pcap.pcap_geterr(handle))
            return None
        finally:
            c.pcap.pcap_close(handle)  # closes fp and fd
            self._check_write()

    def _run(self, handle: int, fd: int, tick: Callable[[int], None] | None) -> int:
        c = self._c
        result: list[int] = []
        done = threading.Event()  # not Thread.join: an interrupted join may return early

        def work() -> None:
            try:
                result.append(c.pcap.pcap_loop(handle, -1, c.dump, self._dumper))
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
            c.pcap.pcap_breakloop(handle)
            while not done.is_set():  # the handle is closed after the loop ends only
                try:
                    done.wait(_WAIT_S)
                except KeyboardInterrupt:
                    continue
            raise
        return result[0] if result else _LOOP_ERROR

    def _check_write(self) -> None:
        if self._dumper is not None and self._c.pcap.pcap_dump_flush(self._dumper) != 0:
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
            self._c.pcap.pcap_dump_close(self._dumper)
            self._dumper = None
            self._c.pcap.pcap_close(self._dead)
