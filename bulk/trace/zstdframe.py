"""Compress independent zstd frames, from several threads at once.

The system's libzstd (Debian's ``libzstd1``, which dpkg itself needs) is called
through ctypes when present: on pcap data at level 3 it used about 27% less CPU
than the libzstd bundled in the python-zstandard wheel (interleaved runs, see
docs/BENCHMARKS.md, "bulk compress"). ctypes drops the GIL during the call, so
frames compress in parallel. Without a usable system library, or with
``BULK_ZSTD=bundled`` in the environment, python-zstandard does the same job.
Either way each frame records its content size and XXH64 checksum and decodes
with any zstd.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from bulk import native

if TYPE_CHECKING:
    import mmap

ENV = "BULK_ZSTD"
_MIN_VERSION = 10400  # ZSTD_compress2 and ZSTD_CCtx_setParameter: stable since 1.4.0
_C_COMPRESSION_LEVEL = 100
_C_CONTENT_SIZE_FLAG = 200
_C_CHECKSUM_FLAG = 201


def _load_system_lib() -> Any:
    """libzstd by its soname (that of every zstd 1.x), else wherever
    ``find_library`` finds it (which runs ``ldconfig -p``: some 3 ms, and 6 ms
    of imports, at every start of ``bulk compress``); None when there is none."""
    try:
        return ctypes.CDLL("libzstd.so.1")
    except OSError:
        pass
    from ctypes.util import find_library  # noqa: PLC0415 - only without the soname

    name = find_library("zstd")
    return None if name is None else ctypes.CDLL(name)


class _InBuffer(ctypes.Structure):
    _fields_ = (("src", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t))


class _OutBuffer(ctypes.Structure):
    _fields_ = (("dst", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t))


@lru_cache(maxsize=1)
def _system_lib() -> Any:
    if os.environ.get(ENV, "") == "bundled":
        return None
    try:
        lib = _load_system_lib()
        if lib is None:
            return None
        lib.ZSTD_versionNumber.restype = ctypes.c_uint
        if lib.ZSTD_versionNumber() < _MIN_VERSION:
            return None
        lib.ZSTD_createCCtx.restype = ctypes.c_void_p
        lib.ZSTD_freeCCtx.argtypes = [ctypes.c_void_p]
        lib.ZSTD_freeCCtx.restype = ctypes.c_size_t
        lib.ZSTD_CCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.ZSTD_CCtx_setParameter.restype = ctypes.c_size_t
        lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
        lib.ZSTD_compressBound.restype = ctypes.c_size_t
        lib.ZSTD_compress2.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        lib.ZSTD_compress2.restype = ctypes.c_size_t
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
        lib.ZSTD_getErrorName.restype = ctypes.c_char_p
        lib.ZSTD_createDCtx.restype = ctypes.c_void_p
        lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
        lib.ZSTD_freeDCtx.restype = ctypes.c_size_t
        lib.ZSTD_getFrameContentSize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
        lib.ZSTD_decompressDCtx.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        lib.ZSTD_decompressDCtx.restype = ctypes.c_size_t
        lib.ZSTD_decompressStream.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_OutBuffer),
            ctypes.POINTER(_InBuffer),
        ]
        lib.ZSTD_decompressStream.restype = ctypes.c_size_t
    except (OSError, AttributeError):
        return None
    return lib


def engine() -> str:
    """Which library compresses: ``system libzstd X.Y.Z`` or ``python-zstandard ...``."""
    lib = _system_lib()
    if lib is None:
        import zstandard  # noqa: PLC0415 - see _BundledContext

        return "python-zstandard (libzstd {})".format(".".join(map(str, zstandard.ZSTD_VERSION)))
    v = lib.ZSTD_versionNumber()
    return f"system libzstd {v // 10000}.{v // 100 % 100}.{v % 100}"


class _SystemContext:
    def __init__(self, lib: Any, level: int) -> None:
        self._lib = lib
        self._cctx: int | None = lib.ZSTD_createCCtx()
        if not self._cctx:
            raise MemoryError("ZSTD_createCCtx failed")
        for param, value in (
            (_C_COMPRESSION_LEVEL, level),
            (_C_CONTENT_SIZE_FLAG, 1),
            (_C_CHECKSUM_FLAG, 1),
        ):
            self._check(lib.ZSTD_CCtx_setParameter(self._cctx, param, value))

    def _check(self, code: int) -> int:
        if self._lib.ZSTD_isError(code):
            import zstandard  # noqa: PLC0415 - see _BundledContext

            raise zstandard.ZstdError(self._lib.ZSTD_getErrorName(code).decode())
        return code

    def compress(self, data: bytes | bytearray) -> bytearray:
        """One frame, compressed into a buffer of its own (not zeroed) that is then
        cut to the frame's length: no copy of the output (copying it out of a
        reused buffer cost some 0.1 CPU s per 500 MB)."""
        bound = self._lib.ZSTD_compressBound(len(data))
        out = new_buffer(bound)
        dst = (ctypes.c_char * bound).from_buffer(out)
        try:
            n = self._lib.ZSTD_compress2(self._cctx, dst, bound, _src(data), len(data))
        finally:
            del dst  # lent buffers cannot be resized
        self._check(n)
        del out[n:]  # less than half of it is cut: CPython keeps the block, no copy
        return out

    def free(self) -> None:
        if self._cctx:
            self._lib.ZSTD_freeCCtx(self._cctx)
            self._cctx = None


def new_buffer(n: int) -> bytearray:
    """``n`` bytes that are not zeroed (``bytearray(n)`` without the accelerator)."""
    mod = native.load("recwalk")
    return bytearray(n) if mod is None else cast(bytearray, mod.new_buffer(n))


def _src(data: bytes | bytearray) -> Any:
    """``data`` as a ctypes argument, without a copy (a bytearray is lent as an array)."""
    if isinstance(data, bytes):
        return data
    return (ctypes.c_char * len(data)).from_buffer(data)


class _BundledContext:
    def __init__(self, level: int) -> None:
        # python-zstandard is imported where it is used (~3 ms): with the system
        # libzstd, it only names the errors.
        import zstandard  # noqa: PLC0415

        self._c = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )

    def compress(self, data: bytes | bytearray) -> bytes | bytearray:
        out: bytes = self._c.compress(data)
        return out

    def free(self) -> None:
        pass


_Context = _SystemContext | _BundledContext


class FrameCompressor:
    """``compress(data)`` returns one zstd frame. Safe from several threads at
    once: each call borrows a context of its own. ``close()`` frees them."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._lib = _system_lib()
        self._idle: queue.SimpleQueue[_Context] = queue.SimpleQueue()
        self._all: list[_Context] = []
        self._lock = threading.Lock()

    def _context(self) -> _Context:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        ctx: _Context
        if self._lib is None:
            ctx = _BundledContext(self.level)
        else:
            ctx = _SystemContext(self._lib, self.level)
        with self._lock:
            self._all.append(ctx)
        return ctx

    def compress(self, data: bytes | bytearray) -> bytes | bytearray:
        ctx = self._context()
        try:
            return ctx.compress(data)
        finally:
            self._idle.put(ctx)

    def close(self) -> None:
        with self._lock:
            for ctx in self._all:
                ctx.free()
            self._all.clear()


def head(comp: bytes, n: int) -> bytes:
    """The first ``n`` bytes of the zstd frame that ``comp`` starts with (fewer if it
    holds fewer, or if ``comp`` is only its start), decoding no more of it than
    the blocks they are in; ValueError if it is corrupt. With the system libzstd
    (streaming decompression), else python-zstandard, which takes some 3 ms to
    import: a slice of a bulk-compressed trace needs only its 24-byte header
    before the window's frames."""
    lib = _system_lib()
    if lib is None:
        import zstandard  # noqa: PLC0415 - see _BundledContext

        try:
            with zstandard.ZstdDecompressor().stream_reader(comp) as reader:
                return bytes(reader.read(n))
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from None
    dctx = lib.ZSTD_createDCtx()
    if not dctx:
        raise MemoryError("ZSTD_createDCtx failed")
    try:
        dst = ctypes.create_string_buffer(n)
        out = _OutBuffer(ctypes.cast(dst, ctypes.c_void_p), n, 0)
        src = _InBuffer(ctypes.cast(ctypes.c_char_p(comp), ctypes.c_void_p), len(comp), 0)
        while out.pos < n and src.pos < src.size:
            r = lib.ZSTD_decompressStream(dctx, ctypes.byref(out), ctypes.byref(src))
            if lib.ZSTD_isError(r):
                raise ValueError(lib.ZSTD_getErrorName(r).decode())
            if r == 0:
                break  # the frame ended
        return dst.raw[: out.pos]
    finally:
        lib.ZSTD_freeDCtx(dctx)


# ZSTD_getFrameContentSize's answers that are not sizes.
_CONTENTSIZE_UNKNOWN = 2**64 - 1
_CONTENTSIZE_ERROR = 2**64 - 2


class _Decoder:
    """A decompression context of the system libzstd and an output buffer it reuses."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self._dctx: int | None = lib.ZSTD_createDCtx()
        if not self._dctx:
            raise MemoryError("ZSTD_createDCtx failed")
        self._buf = ctypes.create_string_buffer(0)

    def decompress(
        self, comp: bytes | bytearray | ctypes.Array[ctypes.c_char], size: int
    ) -> memoryview:
        if len(self._buf) < size:
            self._buf = ctypes.create_string_buffer(size)
        self.decompress_to(comp, self._buf, size)
        return memoryview(self._buf).cast("B")[:size]

    def decompress_to(
        self,
        comp: bytes | bytearray | ctypes.Array[ctypes.c_char],
        dst: ctypes.Array[ctypes.c_char],
        size: int,
    ) -> None:
        """Decompress the frame ``comp`` into the first ``size`` bytes of ``dst``
        (which has room for them); ValueError unless it holds exactly ``size``."""
        lib = self._lib
        if isinstance(comp, bytearray):
            comp = _src(comp)
        declared = lib.ZSTD_getFrameContentSize(comp, len(comp))
        if declared == _CONTENTSIZE_ERROR:
            raise ValueError("not a zstd frame")
        if declared not in (size, _CONTENTSIZE_UNKNOWN):
            raise ValueError(f"its header declares {declared} bytes, the index {size}")
        # Capacity ``size``: a frame holding more is an error, never a larger buffer.
        n = lib.ZSTD_decompressDCtx(self._dctx, dst, size, comp, len(comp))
        if lib.ZSTD_isError(n):
            raise ValueError(lib.ZSTD_getErrorName(n).decode())
        if n != size:
            raise ValueError(f"holds {n} bytes, the index says {size}")

    def free(self) -> None:
        if self._dctx:
            self._lib.ZSTD_freeDCtx(self._dctx)
            self._dctx = None


class FrameDecompressor:
    """Decompresses zstd frames into buffers it reuses, from several threads at once
    (each call borrows a context and its buffer), with the system libzstd: about
    a third less CPU than python-zstandard's bundled library, and no new buffer
    per frame (docs/BENCHMARKS.md, "bulk compress").

    ``equal(comp, original, same)`` decompresses one frame (the decoder checks
    its XXH64 checksum and that it holds exactly ``len(original)`` bytes: ValueError
    if not) and returns ``same(decompressed, original)``, called while the buffer
    is still borrowed. ``decompress_into(comp, comp_len, out, size)`` decompresses
    into the caller's own buffer instead (slicing reuses a few for all frames).
    ``available()`` is False without a usable system library
    (or with ``BULK_ZSTD=bundled``): use python-zstandard then."""

    def __init__(self) -> None:
        self._lib = _system_lib()
        self._idle: queue.SimpleQueue[_Decoder] = queue.SimpleQueue()
        self._all: list[_Decoder] = []
        self._lock = threading.Lock()

    def available(self) -> bool:
        return self._lib is not None

    def _borrow(self) -> _Decoder:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            dec = _Decoder(self._lib)
            with self._lock:
                self._all.append(dec)
            return dec

    def decompress_into(
        self, comp: bytearray | mmap.mmap, at: int, comp_len: int, out: bytearray, size: int
    ) -> None:
        """Decompress the frame in ``comp[at:at + comp_len]`` into ``out[:size]``
        (the caller's buffers, reused from frame to frame: no new pages per
        frame; or a writable mapping of the file). ValueError if the frame is
        corrupt or does not hold exactly ``size`` bytes."""
        if len(out) < size:
            raise ValueError(f"buffer of {len(out)} bytes for a frame of {size}")
        if at < 0 or at + comp_len > len(comp):
            raise ValueError(f"frame at {at}+{comp_len} beyond its buffer of {len(comp)} bytes")
        src = (ctypes.c_char * comp_len).from_buffer(comp, at)
        dst = (ctypes.c_char * size).from_buffer(out)
        dec = self._borrow()
        error = None
        try:
            dec.decompress_to(src, dst, size)
        except ValueError as exc:
            error = str(exc)  # not exc: its traceback holds src and dst
        finally:
            self._idle.put(dec)
            # Lent buffers cannot be resized, nor a mapping closed, while these live.
            del src, dst
        if error is not None:
            raise ValueError(error)

    def equal(
        self,
        comp: bytes | bytearray | ctypes.Array[ctypes.c_char],
        original: bytes | bytearray,
        same: Callable[[memoryview, bytes | bytearray], bool],
    ) -> bool:
        dec = self._borrow()
        try:
            with dec.decompress(comp, len(original)) as plain:
                return same(plain, original)
        finally:
            self._idle.put(dec)

    def close(self) -> None:
        with self._lock:
            for dec in self._all:
                dec.free()
            self._all.clear()
