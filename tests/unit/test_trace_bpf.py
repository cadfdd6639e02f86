"""bulk.trace.bpf: filters compiled by libpcap, and libpcap's own words when it refuses one."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bulk.errors import FilterError
from bulk.trace.bpf import _libpcap_message, compile_bpf

# (expression, pcap LINKTYPE, tcpdump's -y name for it)
REFUSED = [
    ("tcp and", 1, "EN10MB"),
    ("port 99999", 1, "EN10MB"),
    ("ether host 01:02", 1, "EN10MB"),
    ("vlan", 113, "LINUX_SLL"),
]


def tcpdump_message(expression: str, dlt_name: str) -> str:
    """What tcpdump says compiling the same expression (``tcpdump: MESSAGE``)."""
    proc = subprocess.run(
        ["tcpdump", "-y", dlt_name, "-d", expression],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert proc.returncode != 0, proc.stdout
    return proc.stderr.strip().splitlines()[-1].removeprefix("tcpdump: ")


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump (the oracle) missing")
@pytest.mark.parametrize(("expression", "linktype", "dlt_name"), REFUSED)
def test_a_refused_filter_carries_libpcaps_message(
    expression: str, linktype: int, dlt_name: str
) -> None:
    with pytest.raises(FilterError) as err:
        compile_bpf(expression, linktype)
    expected = tcpdump_message(expression, dlt_name)
    assert str(err.value) == f"bad filter {expression!r}: {expected}"
    assert _libpcap_message(linktype, expression) == expected


def test_an_accepted_filter_has_no_message() -> None:
    assert _libpcap_message(1, "tcp port 22") is None
    assert compile_bpf("tcp port 22", 1).get_bpf()
