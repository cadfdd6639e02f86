"""bulk-nic-setup (rendered from the bulk_nic role) on a real veth device.

The interface lives in a network namespace made here (addresses only inside
it), so the host's own interfaces are never touched. ethtool and ip are the
oracles of what the script claims to have done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ansible_render import render

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = render(tmp_path_factory.mktemp("nic"), roles=["bulk_nic"])
    return out / "bulk_nic"


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ethtool") is None:
        pytest.skip("needs root and ethtool")
    ns, dev = f"bnic{os.getpid()}", f"vcap{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip = ["ip", "netns", "exec", ns, "ip"]
        subprocess.run(
            [*ip, "link", "add", dev, "type", "veth", "peer", "name", "vpeer"], check=True
        )
        subprocess.run([*ip, "addr", "add", "10.77.0.1/24", "dev", dev], check=True)
        subprocess.run([*ip, "link", "set", dev, "up"], check=True)
        yield ns, dev
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def setup(
    script_dir: Path, ns: str, dev: str, tmp_path: Path, **override: str
) -> subprocess.CompletedProcess[str]:
    conf = (script_dir / "etc/bulk/nic/ens4.conf").read_text()
    for key, value in override.items():
        conf += f"{key}={value}\n"
    (tmp_path / f"{dev}.conf").write_text(conf)
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "env",
            f"BULK_NIC_CONF_DIR={tmp_path}",
            "sh",
            str(script_dir / "usr/local/sbin/bulk-nic-setup"),
            dev,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def in_ns(ns: str, *cmd: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=True
    ).stdout


def test_interface_ends_silent_promiscuous_and_without_offloads(
    script: Path, netns: tuple[str, str], tmp_path: Path
) -> None:
    ns, dev = netns
    for _ in range(2):  # a second run (a restart of the unit) changes nothing and succeeds
        proc = setup(script, ns, dev, tmp_path)
        assert proc.returncode == 0, proc.stderr
        (link,) = json.loads(in_ns(ns, "ip", "-j", "-d", "link", "show", dev))
        assert {"UP", "NOARP", "PROMISC"} <= set(link["flags"])
        assert link["promiscuity"] >= 1
        (addr,) = json.loads(in_ns(ns, "ip", "-j", "addr", "show", dev))
        assert addr["addr_info"] == []
        assert in_ns(ns, "cat", f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").strip() == "1"

    # Every feature the role lists is off, unless the driver fixes it.
    conf = (script / "etc/bulk/nic/ens4.conf").read_text()
    wanted = next(x for x in conf.splitlines() if x.startswith("OFFLOADS=")).split("=", 1)[1]
    features = {}
    for line in in_ns(ns, "ethtool", "-k", dev).splitlines()[1:]:
        name, _, state = line.strip().partition(": ")
        features[name] = state
    aliases = {
        "rx": "rx-checksumming",
        "tx": "tx-checksumming",
        "sg": "scatter-gather",
        "tso": "tcp-segmentation-offload",
        "gso": "generic-segmentation-offload",
        "gro": "generic-receive-offload",
        "lro": "large-receive-offload",
        "rxvlan": "rx-vlan-offload",
        "txvlan": "tx-vlan-offload",
        "rxhash": "receive-hashing",
        "ntuple": "ntuple-filters",
    }
    checked = 0
    for short in wanted.strip('"').split():
        state = features.get(aliases.get(short, short))
        if state is None:
            continue
        checked += 1
        assert state.startswith("off") or "[fixed]" in state, (short, state)
    assert checked >= 8
    assert features["generic-receive-offload"] == "off"


def test_explicit_ring_size_the_driver_cannot_take_fails(
    script: Path, netns: tuple[str, str], tmp_path: Path
) -> None:
    ns, dev = netns
    proc = setup(script, ns, dev, tmp_path, RX_RING="512")
    assert proc.returncode == 1
    assert "cannot set rx 512" in proc.stderr
    # The rest was still done: a failed ring does not leave a half-made interface.
    (link,) = json.loads(in_ns(ns, "ip", "-j", "link", "show", dev))
    assert {"UP", "PROMISC"} <= set(link["flags"])


def test_missing_interface_fails_after_waiting(
    script: Path, netns: tuple[str, str], tmp_path: Path
) -> None:
    ns, _ = netns
    proc = setup(script, ns, "nosuch0", tmp_path, WAIT_SECONDS="1")
    assert proc.returncode == 1
    assert "no such interface" in proc.stderr
