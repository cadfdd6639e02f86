"""The one packet record that flows from every source to every sink."""

from __future__ import annotations

from typing import NamedTuple

# Link types (pcap LINKTYPE_* numbers) met in practice.
LINKTYPE_NULL = 0  # BSD loopback, host byte order family
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6
LINKTYPE_LOOP = 108  # OpenBSD loopback, network byte order family
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

LINKTYPE_NAMES: dict[int, str] = {
    LINKTYPE_NULL: "NULL",
    LINKTYPE_ETHERNET: "EN10MB",
    LINKTYPE_RAW: "RAW",
    LINKTYPE_LOOP: "LOOP",
    LINKTYPE_LINUX_SLL: "LINUX_SLL",
    LINKTYPE_IPV4: "IPV4",
    LINKTYPE_IPV6: "IPV6",
    LINKTYPE_LINUX_SLL2: "LINUX_SLL2",
}


def linktype_name(linktype: int) -> str:
    return LINKTYPE_NAMES.get(linktype, f"LINKTYPE_{linktype}")


class Packet(NamedTuple):
    """One captured packet.

    ``ts_ns`` is nanoseconds since the epoch (UTC); ``data`` holds the captured
    bytes (``len(data) == caplen``); ``wirelen`` is the length on the wire.
    """

    ts_ns: int
    wirelen: int
    linktype: int
    data: bytes

    @property
    def caplen(self) -> int:
        return len(self.data)
