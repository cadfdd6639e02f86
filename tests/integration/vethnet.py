"""Two network namespaces joined by a veth pair, quiet, for live capture tests.

No addresses at all: tcpreplay injects frames on the sender side and the
capture reads the other end. IPv6 is disabled on both ends before the link
comes up, so the kernel emits nothing of its own (no router solicitation,
no DAD): what is captured is exactly what was sent. Names carry the pid and
a counter, so parallel test runs never collide.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_counter = itertools.count()


@dataclass(frozen=True)
class VethPair:
    sender_ns: str
    capture_ns: str
    sender_dev: str
    capture_dev: str

    def ns_cmd(self, ns: str, *cmd: str | os.PathLike[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *map(str, cmd)]

    def replay(self, *files: str | os.PathLike[str], pps: int = 1000, timeout: float = 120) -> str:
        """tcpreplay the files, in order, at ``pps`` packets per second."""
        proc = subprocess.run(
            self.ns_cmd(
                self.sender_ns, "tcpreplay", "-q", "--pps", str(pps), "-i", self.sender_dev, *files
            ),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        failed = re.search(r"Failed packets:\s+(\d+)", proc.stdout)
        if proc.returncode != 0 or (failed is not None and int(failed.group(1)) != 0):
            raise AssertionError(f"tcpreplay failed: {proc.stdout} {proc.stderr}")
        return proc.stdout


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@contextmanager
def veth_pair(mtu: int = 65535) -> Iterator[VethPair]:
    tag = f"{os.getpid() % 100000}{next(_counter)}"
    pair = VethPair(f"bkcS{tag}", f"bkcC{tag}", f"bkcs{tag}", f"bkcc{tag}")
    try:
        _sh("ip", "netns", "add", pair.sender_ns)
        _sh("ip", "netns", "add", pair.capture_ns)
        _sh(
            "ip",
            "link",
            "add",
            pair.sender_dev,
            "netns",
            pair.sender_ns,
            "type",
            "veth",
            "peer",
            "name",
            pair.capture_dev,
            "netns",
            pair.capture_ns,
        )
        for ns, dev in ((pair.sender_ns, pair.sender_dev), (pair.capture_ns, pair.capture_dev)):
            _sh(*pair.ns_cmd(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"))
            _sh(*pair.ns_cmd(ns, "ip", "link", "set", dev, "mtu", str(mtu), "up"))
        yield pair
    finally:
        for ns in (pair.sender_ns, pair.capture_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def live_pair(*tools: str) -> Iterator[VethPair]:
    """The body of a test module's ``pair`` fixture: a fresh pair, or a skip when
    not root; ``ip`` and ``tools`` must be installed (see require_tool)."""
    import pytest  # noqa: PLC0415 - bench/soak.py uses this module without pytest

    from tests.conftest import require_tool  # noqa: PLC0415

    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    for tool in ("ip", *tools):
        require_tool(tool)
    with veth_pair() as p:
        yield p


class LiveCapture:
    """``bulk capture`` running in the capture namespace (the process is bulk itself)."""

    def __init__(
        self, pair: VethPair, directory: Path, *args: str, interface: str | None = None
    ) -> None:
        self.pair = pair
        self.directory = directory
        self.interface = interface or pair.capture_dev
        self.args = args
        self.log = directory.parent / f"capture-{directory.name}-{next(_counter)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, workers: int = 1, timeout: float = 30) -> LiveCapture:
        cmd = self.pair.ns_cmd(
            self.pair.capture_ns,
            sys.executable,
            "-m",
            "bulk",
            "capture",
            "-i",
            self.interface,
            "--dir",
            str(self.directory),
            *self.args,
        )
        started = time.time_ns()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=Path(__file__).parents[2])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"capture exited {self.proc.returncode}: {self.log_text()}")
            states = self.states()
            if len([s for s in states if s["started_ns"] >= started]) >= workers:
                return self
            time.sleep(0.05)
        raise AssertionError(f"capture did not start: {self.log_text()}")

    def states(self) -> list[dict[str, object]]:
        found = []
        for path in (self.directory / ".bulk").glob(f"capture-{self.interface}.w*.json"):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return found

    def wait_packets(self, count: int, timeout: float = 20) -> None:
        """Until the live state counts ``count`` packets (bounded; the state lags ~2 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(int(s["packets"]) for s in self.states()) >= count:  # type: ignore[call-overload]
                return
            time.sleep(0.1)

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def tcpdump_text(files: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Every packet of ``files`` in order, as tcpdump prints it with link header and
    hex bytes, absolute TCP sequence numbers (a file boundary must not change the
    text), without time: one string per packet. Fails on a read error."""
    packets: list[str] = []
    for f in files:
        proc = subprocess.run(
            ["tcpdump", "-r", str(f), "-nn", "-S", "-t", "-e", "-xx"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"tcpdump -r {f} failed: {proc.stderr}")
        current: list[str] = []
        for line in proc.stdout.splitlines():
            if not line.startswith("\t") and current:
                packets.append("\n".join(current))
                current = []
            current.append(line)
        if current:
            packets.append("\n".join(current))
    return packets
