"""BPF filters compiled by libpcap (through pcapy-ng): tcpdump's semantics, run in C."""

from __future__ import annotations

from collections.abc import Callable

import pcapy

from bulk.errors import FilterError

_MAX_SNAPLEN = 262144
# pcap files store LINKTYPE_* values; libpcap compiles for DLT_* values, which
# differ for a few link types (pcap-linktype(7)).
_LINKTYPE_TO_DLT = {101: 12}  # LINKTYPE_RAW -> DLT_RAW
_NETMASK_UNKNOWN = 0xFFFFFFFF


class BpfFilter:
    """One BPF expression, compiled once per link type met.

    ``match(linktype, data)`` runs the compiled program over the packet bytes.
    An expression libpcap rejects raises FilterError with libpcap's message.
    """

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._programs: dict[int, Callable[[bytes], int]] = {}

    def program(self, linktype: int) -> Callable[[bytes], int]:
        prog = self._programs.get(linktype)
        if prog is None:
            prog = compile_bpf(self.expression, linktype).filter
            self._programs[linktype] = prog
        return prog

    def match(self, linktype: int, data: bytes) -> bool:
        return bool(self.program(linktype)(data))


def compile_bpf(expression: str, linktype: int) -> pcapy.BPFProgram:
    """Compile an expression for a link type, or raise FilterError (one line)."""
    try:
        dlt = _LINKTYPE_TO_DLT.get(linktype, linktype)
        return pcapy.compile(dlt, _MAX_SNAPLEN, expression, 1, _NETMASK_UNKNOWN)
    except pcapy.PcapError as exc:
        message = _libpcap_message(dlt, expression) or str(exc)
        raise FilterError(f"bad filter {expression!r}: {message}") from None


def _libpcap_message(dlt: int, expression: str) -> str | None:
    """libpcap's message for an expression it refuses, asked again through ctypes.

    pcapy-ng 2.1 builds its exception from the handle's error buffer after
    closing the handle (a use after free: AddressSanitizer reports it), so its
    text may be garbled; the same libpcap compiling on a handle kept open gives
    the real one. None when that cannot be done.
    """
    import ctypes  # noqa: PLC0415 - only on the error path

    from bulk.trace import libpcap  # noqa: PLC0415

    try:
        lib = libpcap.load(pcapy.__file__)
    except (OSError, AttributeError):
        return None
    handle = lib.pcap_open_dead(dlt, _MAX_SNAPLEN)
    if not handle:
        return None
    try:
        prog = libpcap.BpfProgram()
        code = expression.encode()
        if lib.pcap_compile(handle, ctypes.byref(prog), code, 1, _NETMASK_UNKNOWN) == 0:
            lib.pcap_freecode(ctypes.byref(prog))
            return None
        return libpcap.text(lib.pcap_geterr(handle)) or None
    finally:
        lib.pcap_close(handle)
