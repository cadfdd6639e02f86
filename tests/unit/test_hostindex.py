"""The host index side file: contents checked against libpcap, life cycle, staleness."""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import pcapy
import pytest
import zstandard

from bulk.archive.hostindex import (
    HostIndex,
    build_index,
    index_path_for,
    load_index_for,
    remove_index_for,
    write_index_for,
)
from tests.conftest import DATA, TRACE_IDS, TRACES


def libpcap_count(path: Path, expr: str) -> int:
    handle = pcapy.open_offline(str(path))
    try:
        handle.setfilter(expr)
    except pcapy.PcapError:
        return 0  # e.g. "vlan" on a link type without VLANs
    n = 0
    try:
        while handle.next()[0] is not None:
            n += 1
    except pcapy.PcapError:
        pass  # a truncated trace: count what was read
    return n


ENCAPSULATIONS = ("", "vlan and ", "vlan and vlan and ", "mpls and ", "vlan and mpls and ")


def anywhere(path: Path, expr: str) -> int:
    """Packets matching ``expr`` at any encapsulation depth the index looks at."""
    return sum(libpcap_count(path, prefix + expr) for prefix in ENCAPSULATIONS)


@pytest.mark.parametrize("trace", TRACES, ids=TRACE_IDS)
def test_every_indexed_value_matches_a_packet(trace: Path) -> None:
    """Index precision: each address, port and protocol it lists selects packets."""
    ix = build_index(str(trace))
    assert ix.complete
    assert ix.packets > 0
    for a in ix.addr4_values():
        assert anywhere(trace, f"host {ipaddress.IPv4Address(a)}"), a
    for a in ix.addr6_values():
        assert anywhere(trace, f"host {ipaddress.IPv6Address(a)}"), a
    for proto, name in ((6, "tcp"), (17, "udp")):
        for p in ix.port_values(proto)[:20]:
            assert anywhere(trace, f"{name} port {p}"), (name, p)


@pytest.mark.parametrize("name", ["zeek-smtp.pcap", "http-vlan-0.pcap", "zeek-ftp-ipv6.pcap"])
def test_no_host_tcpdump_sees_is_missing(name: str) -> None:
    """Index completeness on a sample: hosts in the traffic are all indexed."""
    trace = DATA / name
    ix = build_index(str(trace))
    handle = pcapy.open_offline(str(trace))
    v4, v6 = set(ix.addr4_values()), set(ix.addr6_values())
    seen = 0
    while True:
        hdr, data = handle.next()
        if hdr is None:
            break
        # a crude decoder, independent of the index's: plain or 802.1Q IPv4/IPv6
        off, et = 14, int.from_bytes(data[12:14], "big")
        if et == 0x8100:
            off, et = 18, int.from_bytes(data[16:18], "big")
        if et == 0x0800:
            for a in (data[off + 12 : off + 16], data[off + 16 : off + 20]):
                assert int.from_bytes(a, "big") in v4
                seen += 1
        elif et == 0x86DD:
            for a in (data[off + 8 : off + 24], data[off + 24 : off + 40]):
                assert int.from_bytes(a, "big") in v6
                seen += 1
    assert seen


def test_encode_decode_round_trip() -> None:
    ix = build_index(str(DATA / "tcpflow-udp.pcap"))
    again = HostIndex.decode(ix.encode())
    assert again.meta == ix.meta
    assert again.addr4_values() == ix.addr4_values()
    assert again.addr6_values() == ix.addr6_values()
    assert again.port_values(17) == ix.port_values(17)
    with pytest.raises(ValueError, match="not a bulk host index"):
        HostIndex.decode(b"garbage")


def test_side_file_life_cycle(tmp_path: Path) -> None:
    trace = tmp_path / "a.pcap"
    shutil.copy(DATA / "zeek-smtp.pcap", trace)
    assert load_index_for(str(trace)) is None
    path = write_index_for(str(trace))
    assert path == str(trace) + ".idx" == index_path_for(str(trace))
    assert sorted(os.listdir(tmp_path)) == ["a.pcap", "a.pcap.idx"]  # no temporary left
    ix = load_index_for(str(trace))
    assert ix is not None and ix.packets == 125

    # compressed by bulk compress: the side file moves along (X.pcap.zst.idx) ...
    comp = tmp_path / "a.pcap.zst"
    comp.write_bytes(zstandard.ZstdCompressor().compress(trace.read_bytes()))
    os.replace(path, str(comp) + ".idx")
    assert load_index_for(str(comp)) is not None
    # ... and an interrupted run that left X.pcap.idx is still found for X.pcap.zst
    os.replace(str(comp) + ".idx", path)
    assert load_index_for(str(comp)) is not None

    # a changed trace makes the index stale: ignored
    with open(trace, "ab") as f:
        f.write(b"\0" * 16)
    assert load_index_for(str(trace)) is None
    data = bytearray((DATA / "zeek-http-get.pcap").read_bytes())
    trace.write_bytes(bytes(data))
    assert load_index_for(str(trace)) is None
    # a corrupt side file is ignored too
    Path(path).write_bytes(b"BULKHIX1 not zlib")
    assert load_index_for(str(trace)) is None
    assert remove_index_for(str(trace))
    assert not os.path.exists(path)


def test_incomplete_for_undecoded_link_types(tmp_path: Path) -> None:
    trace = tmp_path / "ppp.pcap"
    raw = bytearray((DATA / "zeek-smtp.pcap").read_bytes())
    raw[20:24] = (9).to_bytes(4, "little")  # LINKTYPE_PPP: not decoded
    trace.write_bytes(bytes(raw))
    assert not build_index(str(trace)).complete


def test_linktype_numbers_agree_with_the_trace_layer() -> None:
    from bulk.archive import hostindex  # noqa: PLC0415
    from bulk.trace import packet  # noqa: PLC0415

    for name in ("NULL", "ETHERNET", "RAW", "LOOP", "LINUX_SLL", "IPV4", "IPV6", "LINUX_SLL2"):
        assert getattr(hostindex, f"LINKTYPE_{name}") == getattr(packet, f"LINKTYPE_{name}")
