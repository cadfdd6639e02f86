"""Index skipping never changes a result: extraction with the host index equals
extraction without it, byte for byte, over an archive of real traces, for random
filters over hosts present in some files, hosts absent from all, ports and protocols."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulk.archive.hostindex import build_index, write_index_for
from bulk.cli import main as bulk_main
from bulk.extraction import describe, make_plan
from bulk.timespec import TimeWindow
from tests.conftest import DATA, require_tool

pytestmark = pytest.mark.integration

MEMBERS = [
    "zeek-smtp.pcap",
    "zeek-http-get.pcap",
    "ssh-on-port-80.pcap",
    "arkime-v6-http.pcap",
    "http-vlan-0.pcap",
    "arkime-twovlan.pcap",
    "mixed-vlan-mpls.pcap",
    "pptp.pcap",
    "zeek-ftp-ipv6.pcap",
    "dns_udp.pcap",
    "irc-dcc-send.pcapng",
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    for name in MEMBERS:
        shutil.copy(DATA / name, root / name)
    subprocess.run(
        [require_tool("zstd"), "-q", "--rm", str(root / "zeek-http-get.pcap")], check=True
    )
    for f in sorted(root.iterdir()):
        write_index_for(str(f))
    return root


def present_values() -> tuple[list[str], list[int]]:
    hosts: set[str] = set()
    ports: set[int] = set()
    for name in MEMBERS:
        ix = build_index(str(DATA / name))
        hosts.update(str(ipaddress.IPv4Address(a)) for a in ix.addr4_values())
        hosts.update(str(ipaddress.IPv6Address(a)) for a in ix.addr6_values())
        ports.update(ix.port_values(6)[:10])
    return sorted(hosts), sorted(ports)


HOSTS, PORTS = present_values()
ABSENT = ["192.0.2.77", "10.99.0.1", "2001:db8::dead", "8.8.4.4"]

host = st.sampled_from(HOSTS + ABSENT)
atom = st.one_of(
    host.map(lambda h: f"host {h}"),
    host.map(lambda h: f"src host {h}"),
    st.sampled_from(PORTS).map(lambda p: f"tcp port {p}"),
    st.sampled_from(["udp", "tcp", "ip6", "arp", "icmp6", "vlan", "mpls", "ip proto 47"]),
    st.sampled_from(["net 141.142.0.0/16", "net 10.0.0.0/8", "ip6 net 2001:db8::/32"]),
    st.tuples(host, host).map(lambda t: f"host {t[0]} or {t[1]}"),
)
expressions = st.recursive(
    atom,
    lambda c: st.one_of(
        st.tuples(c, c).map(lambda t: f"({t[0]}) and ({t[1]})"),
        st.tuples(c, c).map(lambda t: f"{t[0]} or {t[1]}"),
        st.tuples(c, c).map(lambda t: f"{t[0]} and {t[1]}"),
        c.map(lambda x: f"not ({x})"),
    ),
    max_leaves=4,
)


def extract(archive: Path, out: Path, expr: str, *extra: str) -> tuple[int, bytes]:
    rc = bulk_main(["extract", "--dir", str(archive), "-w", str(out), *extra, expr])
    return rc, out.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(expr=expressions)
def test_index_never_changes_the_result(archive: Path, tmp_path: Path, expr: str) -> None:
    import pcapy  # noqa: PLC0415

    try:
        pcapy.compile(1, 262144, expr, 1, 0xFFFFFFFF)
    except pcapy.PcapError:
        return  # not a filter libpcap accepts
    with_index = extract(archive, tmp_path / "a.pcap", expr)
    without = extract(archive, tmp_path / "b.pcap", expr, "--no-index")
    assert with_index == without


def test_index_does_skip(archive: Path) -> None:
    """Not vacuous: a host found in one trace only leaves the others unread."""
    paths = sorted(str(p) for p in archive.iterdir() if not p.name.endswith(".idx"))
    inputs = [describe(p, use_index=True) for p in paths]
    assert all(i.index is not None for i in inputs)
    plan = make_plan(paths, "host 2001:db8::dead", TimeWindow(None, None), inputs=inputs)
    assert plan.skipped_by_index == len(paths) and not plan.to_read
    ftp_v6 = build_index(str(DATA / "zeek-ftp-ipv6.pcap")).addr6_values()[0]
    expr = f"host {ipaddress.IPv6Address(ftp_v6)} and tcp"
    plan = make_plan(paths, expr, TimeWindow(None, None), inputs=inputs)
    assert [Path(i.path).name for i in plan.to_read] == ["zeek-ftp-ipv6.pcap"]
