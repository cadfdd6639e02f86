"""The live capture handle: created, tuned, activated, filtered, made non-blocking.

Two engines: ``libpcap`` (the system libpcap through ctypes,
:mod:`bulk.capture.libpcap`; the default when it loads) and ``pcapy`` (pcapy-ng,
below; the fallback). pcapy-ng's ``next``/``dispatch``/``next_batch`` block on an idle interface
whatever the timeout, so the handle is switched to non-blocking mode and the
capture loop polls its file descriptor: rotation by time and signals then
work on a quiet link too.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pcapy

from bulk.capture import libpcap
from bulk.capture.options import CaptureOptions
from bulk.errors import CaptureError, FilterError

log = logging.getLogger("bulk.capture")

# libpcap's pcap_activate() status codes (pcap/pcap.h).
_ACTIVATE_ERRORS = {
    -1: "capture failed",
    -3: "handle not activated",
    -4: "handle already activated",
    -5: "no such interface",
    -6: "monitor mode not supported",
    -7: "not in monitor mode",
    -8: "permission denied (needs root or CAP_NET_RAW and CAP_NET_ADMIN)",
    -9: "interface is down",
    -10: "cannot set the time stamp type",
    -11: "permission denied for promiscuous mode",
    -12: "time stamp precision not supported",
}


def engine(opts: CaptureOptions) -> str:
    """The engine ``opts`` asks for, ``auto`` resolved: libpcap when it loads."""
    if opts.engine != "auto":
        return opts.engine
    if libpcap.available():
        return "libpcap"
    try:
        libpcap.load()
    except CaptureError as exc:
        log.warning("%s; capturing with pcapy-ng (more CPU per packet)", exc)
    return "pcapy"


def open_live(opts: CaptureOptions) -> Any:
    """An activated, filtered, non-blocking handle on ``opts.interface``."""
    iface = opts.interface
    if iface != "any":
        try:
            socket.if_nametoindex(iface)
        except OSError:
            raise CaptureError(f"{iface}: no such interface") from None
    if engine(opts) == "libpcap":
        return libpcap.open_live(opts)
    try:
        handle = pcapy.create(iface)
        handle.set_snaplen(opts.snaplen)
        handle.set_promisc(opts.promisc)
        handle.set_timeout(opts.timeout_ms)
        handle.set_buffer_size(opts.buffer_size)
        status = handle.activate()
    except pcapy.PcapError as exc:
        raise CaptureError(f"{iface}: {exc}") from None
    if status < 0:
        raise CaptureError(f"{iface}: {_activate_message(iface, status)}")
    if opts.bpf:
        try:
            handle.setfilter(opts.bpf)
        except pcapy.PcapError as exc:
            handle.close()
            raise FilterError(f"bad filter {opts.bpf!r}: {exc}") from None
    handle.setnonblock(1)
    return handle


def _activate_message(iface: str, status: int) -> str:
    """libpcap's own message where pcapy-ng's activate() only returns the code."""
    reason = _ACTIVATE_ERRORS.get(status, f"activation failed (libpcap status {status})")
    if status == -1:
        try:
            pcapy.open_live(iface, 64, False, 100).close()
        except pcapy.PcapError as exc:
            return str(exc).removeprefix(f"{iface}: ")
    return reason


def join_fanout(handle: Any, group: int) -> int:
    """Join the PACKET_FANOUT group (flow hash). Returns the time just before
    joining (ns): packets stamped earlier were received before this handle
    was a member, and were also delivered to the group."""
    before = time.time_ns()
    try:
        handle.set_fanout(group, pcapy.PACKET_FANOUT_HASH)
    except (pcapy.PcapError, OSError) as exc:
        raise CaptureError(f"cannot join fanout group {group}: {exc}") from None
    return before
