"""tcpflow as the oracle for `bulk contents`, fed a trace it can read correctly.

tcpflow 1.6.1 has two limits that are not about reassembly:

* it writes the link-layer trailer of a frame (Ethernet padding of short
  FIN/RST frames, F5 trailers) into the stream as if it were TCP payload,
  and then sometimes opens a second "c1" file for those bytes;
* it does not decode MPLS.

So tcpflow gets a normalised copy of each trace, made with scapy (an
independent dissector, not bulk's decoder): every IPv4/IPv6 packet, found
through whatever encapsulation scapy understands, is cut at its IP length and
re-framed as plain Ethernet; packet order and timestamps are kept, so
reordering, retransmissions and duplicates reach tcpflow unchanged.

tcpflow's names: ``SRC.SPORT-DST.DPORT`` with IPv4 octets zero-padded to three
digits and ports to five (``010.000.000.001.01234-...``), IPv6 addresses in
their compressed form with colons, ``--VLAN`` appended for 802.1Q frames
(the outer tag; the normalised copy has none), and ``c1``, ``c2``... for
later connections on the same 4-tuple.
"""

from __future__ import annotations

import collections
import ipaddress
import os
import re
import subprocess
from pathlib import Path

from scapy.contrib.mpls import MPLS  # noqa: F401 - binds ethertype 0x8847 to MPLS
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapReader, PcapWriter

TCPFLOW_NAME = re.compile(
    r"^(?P<src>[0-9a-fA-F.:]+)\.(?P<sp>\d{5})-(?P<dst>[0-9a-fA-F.:]+)\.(?P<dp>\d{5})"
    r"(?:--(?P<vlan>\d+))?(?:c(?P<c>\d+))?$"
)

Key = tuple[str, int, str, int]  # sender host, port, receiver host, port


def normalise_for_tcpflow(src: Path, dst: Path) -> int:
    """Write the normalised copy; returns the number of TCP packets in it.

    tcpdump first copies the whole records (scapy would also return the
    partial last record of a file cut mid-packet, which is not a packet).
    """
    whole = dst.with_suffix(".whole.pcap")
    subprocess.run(
        ["tcpdump", "-r", str(src), "-w", str(whole)], capture_output=True, timeout=60, check=False
    )
    n_tcp = 0
    with PcapReader(str(whole)) as reader, PcapWriter(str(dst), linktype=1, sync=False) as writer:
        while True:
            try:
                pkt = reader.read_packet()
            except EOFError:
                break
            if pkt is None:
                break
            ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
            if ip is None:
                continue
            raw = bytes(ip)
            length = ip.len if ip.version == 4 else 40 + ip.plen
            if length and length < len(raw):
                raw = raw[:length]
            ethertype = 0x0800 if ip.version == 4 else 0x86DD
            out = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=ethertype) / Raw(raw)
            out.time = pkt.time
            writer.write(out)
            if ip.haslayer(TCP):
                n_tcp += 1
    return n_tcp


def _host(text: str) -> str:
    if ":" in text:
        return str(ipaddress.ip_address(text))
    return str(ipaddress.ip_address(".".join(str(int(x)) for x in text.split("."))))


def run_tcpflow(trace: Path, outdir: Path) -> dict[Key, list[Path]]:
    """Run tcpflow; its stream files grouped by endpoints, in connection order."""
    outdir.mkdir()
    subprocess.run(
        ["tcpflow", "-r", str(trace), "-o", str(outdir)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    found: dict[Key, list[tuple[int, Path]]] = collections.defaultdict(list)
    for name in os.listdir(outdir):
        m = TCPFLOW_NAME.match(name)
        if m is None:
            continue
        key = (_host(m["src"]), int(m["sp"]), _host(m["dst"]), int(m["dp"]))
        found[key].append((int(m["c"] or 0), outdir / name))
    return {k: [p for _, p in sorted(v)] for k, v in found.items()}
