"""playbooks/status.yml and playbooks/extract.yml against stand-in sensors.

The "sensors" are inventory hosts with a local connection, each with its own
archive directory under the test's tmp_path, running the controller's real
bulk; a third host points at a closed port, so it is unreachable. Nothing
outside tmp_path is written.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bulk.trace import open_trace
from tests.ansible_render import ROOT, tool
from tests.conftest import DATA, require_tool

BULK = str(Path(sys.executable).parent / "bulk")


def fleet(tmp_path: Path, traces: dict[str, list[str]], unreachable: bool = True) -> Path:
    """An inventory of local sensors, each archive holding copies of the named traces."""
    hosts: dict[str, dict[str, object]] = {}
    for host, names in traces.items():
        archive = tmp_path / host / "traces"
        archive.mkdir(parents=True)
        for name in names:
            shutil.copy(DATA / name, archive / name)
        hosts[host] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "bulk_capture_dir": str(archive),
            "bulk_install_venv": str(Path(sys.executable).parent.parent),
        }
    if unreachable:
        hosts["sensor-gone"] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": 9,
            "ansible_connection": "ssh",
            "ansible_ssh_common_args": "-o ConnectTimeout=5 -o BatchMode=yes",
        }
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"bulk_sensors": {"hosts": hosts}}))
    return inventory


def play(playbook: str, inventory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [tool("ansible-playbook"), "-i", str(inventory), f"playbooks/{playbook}", *extra]
    env = {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks"}
    return subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**__import__("os").environ, **env},
    )


def columns(lines: list[str]) -> list[dict[str, str]]:
    """Rows of an aligned table as dicts, cut at the header's column starts."""
    header = lines[0]
    names = header.split()
    starts = [
        header.index(f"{name} " if i < len(names) - 1 else name) for i, name in enumerate(names)
    ]
    return [
        {
            name: line[start : starts[i + 1] if i + 1 < len(starts) else None].strip()
            for i, (name, start) in enumerate(zip(names, starts, strict=True))
        }
        for line in lines[1:]
    ]


def table_lines(stdout: str) -> list[str]:
    """The table the status playbook prints (debug of a list of lines)."""
    start = stdout.index('"msg": [')
    end = stdout.index("]", start)
    block = stdout[start + len('"msg": ') : end + 1]
    return list(yaml.safe_load(block))


def test_status_prints_one_table_and_fails_when_capture_is_down(tmp_path: Path) -> None:
    inventory = fleet(
        tmp_path, {"sensor-a": ["ssh-on-port-80.pcap", "dns_udp.pcap"], "sensor-b": []}
    )
    proc = play("status.yml", inventory)
    lines = table_lines(proc.stdout)
    assert lines[0].split()[:3] == ["sensor", "interface", "capture"]
    by_host = {row["sensor"]: row for row in columns(lines)}
    assert set(by_host) == {"sensor-a", "sensor-b", "sensor-gone"}
    # No capture ever ran on these archives; the file count is bulk's own.
    assert by_host["sensor-a"]["capture"] == by_host["sensor-b"]["capture"] == "none known"
    assert by_host["sensor-a"]["files"] == "2"
    assert by_host["sensor-b"]["files"] == "0"
    assert by_host["sensor-gone"]["capture"] == "unreachable"
    assert proc.returncode == 4, proc.stdout[-3000:]  # ansible-playbook: a host unreachable

    # Every sensor answers, but no capture runs: the fleet check fails.
    answering = fleet(tmp_path / "again", {"sensor-a": ["dns_udp.pcap"]}, unreachable=False)
    down = play("status.yml", answering)
    assert down.returncode == 2, down.stdout[-3000:]
    assert "Some capture is not running" in down.stdout
    assert play("status.yml", answering, "-e", "status_fail=false").returncode == 0


def bulk_has_extract() -> bool:
    proc = subprocess.run([BULK, "extract", "--help"], capture_output=True, check=False)
    return proc.returncode == 0


def count(path: Path, bpf: str = "") -> int:
    tcpdump = require_tool("tcpdump")
    proc = subprocess.run(
        [tcpdump, "-n", "-r", str(path), *([bpf] if bpf else [])],
        capture_output=True,
        text=True,
        check=True,
    )
    return len(proc.stdout.splitlines())


def test_extract_merges_every_sensor_in_time_order(tmp_path: Path) -> None:
    if not bulk_has_extract():
        pytest.skip("bulk extract is not in this tree yet (issue 6)")
    traces = {"sensor-a": ["ssh-on-port-80.pcap"], "sensor-b": ["ndpi-ssh.pcap"]}
    inventory = fleet(tmp_path, traces, unreachable=False)
    output = tmp_path / "merged.pcap"
    bpf = "tcp"
    proc = play(
        "extract.yml",
        inventory,
        "-e",
        "extract_start=1970-01-01T00:00Z",
        "-e",
        "extract_end=2100-01-01T00:00Z",
        "-e",
        f"extract_filter='{bpf}'",
        "-e",
        f"extract_output={output}",
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # tcpdump is the oracle for what each sensor's filter keeps.
    for host, names in traces.items():
        expected = sum(count(DATA / n, bpf) for n in names)
        assert count(output.with_name(output.name + ".d") / f"{host}.pcap") == expected
    total = sum(count(DATA / n, bpf) for names in traces.values() for n in names)
    assert count(output) == total
    with open_trace(str(output)) as reader:
        stamps = [pkt.ts_ns for pkt in reader]
    assert stamps == sorted(stamps) and len(stamps) == total


def test_contents_fetches_every_file_each_sensor_wrote(tmp_path: Path) -> None:
    traces = {"sensor-a": ["http-single-conn-22.pcap"], "sensor-b": ["irc-basic.pcap"]}
    inventory = fleet(tmp_path, traces, unreachable=False)
    output = tmp_path / "contents"
    proc = play(
        "contents.yml",
        inventory,
        "-e",
        "contents_start=1970-01-01T00:00Z",
        "-e",
        "contents_end=2100-01-01T00:00Z",
        "-e",
        "contents_filter=tcp",
        "-e",
        f"contents_output={output}",
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for host, names in traces.items():
        # What bulk contents writes for the same trace run here, directly.
        direct = tmp_path / f"direct-{host}"
        argv = [BULK, "contents", "-q", "-f", "tcp", "-o", str(direct)]
        argv += [arg for n in names for arg in ("-r", str(DATA / n))]
        subprocess.run(argv, check=True, capture_output=True)
        fetched = {p.name: p.read_bytes() for p in (output / host).iterdir()}
        expected = {p.name: p.read_bytes() for p in direct.iterdir()}
        assert len(expected) >= 3  # two directions and the summary, at least
        assert fetched.keys() == expected.keys()
        for name, data in expected.items():
            if name != "contents.jsonl":  # the summary names its input files
                assert fetched[name] == data, name
