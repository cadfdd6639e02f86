"""``bulk capture``, ``bulk rotate``, ``bulk status`` and ``bulk index`` on real traffic.

Two network namespaces joined by a veth pair (no addresses, IPv6 off: the
link carries only what tcpreplay sends); ``bulk capture`` on one end,
``tcpreplay`` of real traces on the other. The oracle for "captured equals
sent" is tcpdump: the packets it prints from the sent files (link header,
length, every byte, in order) must be the packets it prints from the archive.
Packet counts and times of each file come from capinfos.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bulk.archive.catalogue import Catalogue
from bulk.archive.hostindex import load_index_for
from bulk.archive.naming import parse_name
from bulk.archive.pidfile import pidfile_path, read_pidfile, running_capture
from tests.conftest import DATA
from tests.faults.live import finals
from tests.integration.vethnet import LiveCapture, VethPair, live_pair, tcpdump_text

pytestmark = pytest.mark.integration

# Ethernet traces that cross a veth byte for byte (VLAN, QinQ and MPLS
# included); about 1,900 packets, small and large.
SENT = [
    DATA / "zeek-smtp.pcap",
    DATA / "ssh-dups.pcap",
    DATA / "irc-dcc-send.pcapng",
    DATA / "zeek-ftp-ipv6.pcap",
    DATA / "mixed-vlan-mpls.pcap",
    DATA / "arkime-twovlan.pcap",
    DATA / "http-vlan-0.pcap",
]
PPS = 2000


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    yield from live_pair("tcpreplay", "tcpdump", "capinfos", "mergecap")


@pytest.fixture(scope="module")
def expected() -> list[str]:
    return tcpdump_text(SENT)


def opens(d: Path) -> list[Path]:
    return sorted(d.glob("*.open"))


def capinfos(path: Path) -> tuple[int, int | None, int | None]:
    """(packets, earliest ns, latest ns) of a file, by capinfos (None: no packet)."""
    out = (
        subprocess.run(
            ["capinfos", "-T", "-r", "-c", "-a", "-e", "-S", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split("\t")
    )
    return int(out[1]), _ns(out[2]), _ns(out[3])


def _ns(text: str) -> int | None:
    if text == "n/a":
        return None
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def bulk_in_ns(pair: VethPair, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        pair.ns_cmd(pair.capture_ns, sys.executable, "-m", "bulk", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=Path(__file__).parents[2],
    )


def check_catalogue(d: Path, files: list[Path], repaired: set[str] | None = None) -> None:
    """Every file is catalogued closed, with capinfos's count and times.

    Kernel drops are known (0 here) except for a file repaired after a crash."""
    with Catalogue.open(str(d)) as cat:
        for f in files:
            rec = cat.get(f.name)
            assert rec is not None, f.name
            packets, first, last = capinfos(f)
            assert (rec.state, rec.packets, rec.first_ns, rec.last_ns) == (
                "closed",
                packets,
                first,
                last,
            ), f.name
            assert rec.size == f.stat().st_size
            assert rec.drops == (None if f.name in (repaired or set()) else 0)
            assert rec.indexed
            if packets:
                assert cat.time_index(f.name)[0].offset == 24


def test_capture_equals_sent_with_size_rotations(
    pair: VethPair, expected: list[str], tmp_path: Path
) -> None:
    d = tmp_path / "archive"
    cap = LiveCapture(pair, d, "--rotate-bytes", "64K").start()
    try:
        pair.replay(*SENT, pps=PPS)
        cap.wait_packets(len(expected))
        status = bulk_in_ns(
            pair, "status", "--dir", str(d), "--json", "--prometheus", str(tmp_path / "bulk.prom")
        )
    finally:
        assert cap.stop() == 0, cap.log_text()
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    [c] = doc["captures"]
    assert c["running"] and c["pid"] == cap.proc.pid and c["interface"] == pair.capture_dev
    assert c["current_files"][0].endswith(".pcap.open")
    prom = (tmp_path / "bulk.prom").read_text()
    assert f'bulk_capture_up{{interface="{pair.capture_dev}"}} 1' in prom
    assert f'bulk_capture_drops_total{{interface="{pair.capture_dev}"}} 0' in prom

    files = finals(d)
    assert not opens(d)
    assert len(files) >= 3, "rotation by size did not happen"
    assert tcpdump_text(files) == expected  # count, bytes and order
    assert [parse_name(f.name).seq for f in files] == list(range(1, len(files) + 1))
    check_catalogue(d, files)
    for f in files:  # each closed file carries the host index extraction skips by
        assert load_index_for(str(f)) is not None, f"{f.name}: no valid host index"
    log = cap.log_text()
    for f in files:  # one log line per closed file, with its packets
        assert f"closed {f.name} " in log
        assert f": {capinfos(f)[0]} packets, " in log.split(f"closed {f.name} ", 1)[1]

    stopped = bulk_in_ns(pair, "status", "--dir", str(d))
    assert stopped.returncode == 1 and "NOT running" in stopped.stdout


def test_sighup_rotates_between_two_replays(pair: VethPair, tmp_path: Path) -> None:
    d = tmp_path / "archive"
    first, second = DATA / "zeek-smtp.pcap", DATA / "zeek-ftp-ipv6.pcap"
    cap = LiveCapture(pair, d).start()
    try:
        pair.replay(first, pps=PPS)
        cap.wait_packets(len(tcpdump_text([first])))
        cap.send(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not cap.states()[0]["rotations"]:
            time.sleep(0.05)
        pair.replay(second, pps=PPS)
        cap.wait_packets(len(tcpdump_text([first, second])))
    finally:
        assert cap.stop() == 0, cap.log_text()
    files = finals(d)
    assert len(files) == 2
    assert tcpdump_text(files[:1]) == tcpdump_text([first])
    assert tcpdump_text(files[1:]) == tcpdump_text([second])
    assert "(SIGHUP): " in cap.log_text()


def test_two_fanout_workers_merge_to_what_was_sent(
    pair: VethPair, expected: list[str], tmp_path: Path
) -> None:
    d = tmp_path / "archive"
    cap = LiveCapture(pair, d, "--workers", "2", "--rotate-bytes", "256K").start(workers=2)
    try:
        pair.replay(*SENT, pps=PPS)
        cap.wait_packets(len(expected))
    finally:
        assert cap.stop() == 0, cap.log_text()
    assert not opens(d)
    series = [finals(d, 0), finals(d, 1)]
    for files in series:  # each worker wrote its own series, numbered from 1
        assert files, "a worker wrote no file"
        assert [parse_name(f.name).seq for f in files] == list(range(1, len(files) + 1))
    merged = tmp_path / "merged.pcap"
    subprocess.run(["mergecap", "-w", str(merged), *map(str, finals(d))], check=True)
    assert tcpdump_text([merged]) == expected
    # The flow hash spread the traffic: both workers captured packets.
    assert all(sum(capinfos(f)[0] for f in files) > 0 for files in series)
    check_catalogue(d, finals(d))


def _digest(p: Path) -> tuple[int, str]:
    return p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest()


def test_kill9_then_restart_repairs_and_continues(pair: VethPair, tmp_path: Path) -> None:
    d = tmp_path / "archive"
    cap = LiveCapture(pair, d, "--rotate-bytes", "300K").start()
    replay = subprocess.Popen(
        pair.ns_cmd(
            pair.sender_ns,
            "tcpreplay",
            "-q",
            "--pps",
            "400",
            "-i",
            pair.sender_dev,
            str(DATA / "irc-dcc-send.pcapng"),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = cap.states()
            written = opens(d)
            if states and states[0]["rotations"] and written and written[0].stat().st_size > 8192:
                break
            time.sleep(0.02)
        cap.stop(signal.SIGKILL)
        _wait_archivers(d)
    finally:
        replay.wait(60)
    # The open file, and maybe the file just closed if the kill came before
    # the background thread renamed it.
    left_open = {p: p.read_bytes() for p in opens(d)}
    assert left_open
    before = {f.name: _digest(f) for f in finals(d)}

    cap2 = LiveCapture(pair, d, "--rotate-bytes", "300K").start()
    pair.replay(DATA / "zeek-smtp.pcap", pps=PPS)
    cap2.wait_packets(125)
    assert cap2.stop() == 0, cap2.log_text()

    assert not opens(d)
    repaired = []
    for path, content in left_open.items():
        final = d / path.name.removesuffix(".open")
        assert final.exists()
        if len(content) >= 24:
            assert content.startswith(final.read_bytes())  # at most a cut tail was removed
        else:  # killed before the file header reached the disk: a header is written
            assert final.stat().st_size == 24
        assert f"repaired {final.name}" in cap2.log_text()
        repaired.append(final.name)
    for name, digest in before.items():  # nothing overwritten
        assert _digest(d / name) == digest
    files = finals(d)
    tcpdump_text(files)  # tcpdump reads every file without error
    seqs = [parse_name(f.name).seq for f in files]
    assert seqs == list(range(1, len(files) + 1))  # the sequence went on after the crash
    old = max(parse_name(n).seq for n in [*before, *repaired])
    assert len(files) > old
    check_catalogue(d, files, repaired=set(repaired))


def _wait_archivers(d: Path) -> None:
    """The killed capture's archiver finishes the jobs it had, then ends: wait for it."""
    for proc in psutil.process_iter(["cmdline"]):
        if str(d) in " ".join(proc.info["cmdline"] or []):
            _wait_gone(proc.pid)


def _wait_gone(pid: int, timeout: float = 30) -> None:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass


def test_rotate_starts_rotates_and_ignores_stale_pid(pair: VethPair, tmp_path: Path) -> None:
    d = tmp_path / "archive"
    dev = pair.capture_dev
    pids: list[int] = []
    decoy = subprocess.Popen(["sleep", "120"])
    try:
        # 1. No capture running: rotate starts one, detached, logging in the archive.
        out = bulk_in_ns(pair, "rotate", "-i", dev, "--dir", str(d))
        assert out.returncode == 0, out.stderr
        info = running_capture(str(d), dev)
        assert info is not None and f"started capture on {dev} (pid {info.pid})" in out.stdout
        pids.append(info.pid)
        assert psutil.Process(info.pid).ppid() != os.getpid()  # not our child
        pair.replay(DATA / "zeek-smtp.pcap", pps=PPS)

        # 2. Running: rotate makes it switch files, same process.
        out = bulk_in_ns(pair, "rotate", "-i", dev, "--dir", str(d))
        assert out.returncode == 0, out.stderr
        assert f"rotated capture on {dev} (pid {info.pid})" in out.stdout
        assert len(finals(d)) == 1 and tcpdump_text(finals(d)) == tcpdump_text(
            [DATA / "zeek-smtp.pcap"]
        )
        os.kill(info.pid, signal.SIGTERM)
        _wait_gone(info.pid)
        assert not opens(d)

        # 3. A stale pid file naming a live process that is not the capture
        # (a reused pid): never signalled; a fresh capture starts.
        Path(pidfile_path(str(d), dev)).write_text(
            f"{decoy.pid}\n"
            + json.dumps(
                {
                    "pid": decoy.pid,
                    "create_time": 1.0,
                    "interface": dev,
                    "directory": str(d),
                    "started_ns": 1,
                }
            )
            + "\n"
        )
        out = bulk_in_ns(pair, "rotate", "-i", dev, "--dir", str(d))
        assert out.returncode == 0, out.stderr
        assert decoy.poll() is None, "rotate signalled a process that is not the capture"
        fresh = running_capture(str(d), dev)
        assert fresh is not None and fresh.pid not in (decoy.pid, info.pid)
        pids.append(fresh.pid)
        assert f"started capture on {dev} (pid {fresh.pid})" in out.stdout
        assert read_pidfile(pidfile_path(str(d), dev)).pid == fresh.pid
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            _wait_gone(pid)
        decoy.kill()
        decoy.wait()
    assert not opens(d)
    seqs = [parse_name(f.name).seq for f in finals(d)]
    assert seqs == list(range(1, len(seqs) + 1))


def _one_line_error(proc: subprocess.CompletedProcess[str], words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bulk capture: ") and words in lines[0], lines[0]


def test_errors_are_one_clear_line(pair: VethPair, tmp_path: Path) -> None:
    missing = bulk_in_ns(pair, "capture", "-i", "nosuch0dev", "--dir", str(tmp_path / "a"))
    _one_line_error(missing, "nosuch0dev: no such interface")

    bad = bulk_in_ns(
        pair,
        "capture",
        "-i",
        pair.capture_dev,
        "--dir",
        str(tmp_path / "b"),
        "--filter",
        "tcp port",
    )
    _one_line_error(bad, "bad filter 'tcp port'")
    assert bad.returncode == 2

    ro = tmp_path / "readonly"
    ro.mkdir()
    script = (
        f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && exec {sys.executable} -m bulk "
        f"capture -i {pair.capture_dev} --dir {ro}"
    )
    unwritable = subprocess.run(
        pair.ns_cmd(pair.capture_ns, "unshare", "-m", "sh", "-c", script),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    _one_line_error(unwritable, f"{ro}: archive directory not writable")


def test_index_rebuild_recreates_a_lost_catalogue(pair: VethPair, tmp_path: Path) -> None:
    d = tmp_path / "archive"
    cap = LiveCapture(pair, d, "--rotate-bytes", "32K").start()
    try:
        pair.replay(DATA / "ssh-dups.pcap", DATA / "zeek-smtp.pcap", pps=PPS)
        cap.wait_packets(502)
    finally:
        assert cap.stop() == 0
    keys = (
        "name",
        "state",
        "interface",
        "worker",
        "seq",
        "packets",
        "bytes",
        "size",
        "first_ns",
        "last_ns",
        "linktype",
    )
    with Catalogue.open(str(d)) as cat:
        before = sorted(
            ({k: getattr(r, k) for k in keys} for r in cat.files()), key=lambda r: r["name"]
        )
        index_before = {r.name: cat.time_index(r.name) for r in cat.files()}
    for p in (d / ".bulk").glob("catalogue.sqlite*"):
        p.unlink()
    out = bulk_in_ns(pair, "index", "--rebuild", "--dir", str(d))
    assert out.returncode == 0, out.stderr
    with Catalogue.open(str(d)) as cat:
        after = sorted(
            ({k: getattr(r, k) for k in keys} for r in cat.files()), key=lambda r: r["name"]
        )
        assert {r.name: cat.time_index(r.name) for r in cat.files()} == index_before
        assert cat.last_seq(pair.capture_dev, 0) == len(before)
    assert after == before and len(before) >= 2


def test_time_rotation_on_an_idle_link(pair: VethPair, tmp_path: Path) -> None:
    """Non-blocking capture: files rotate on the clock and SIGTERM stops it while
    nothing arrives (pcapy-ng's blocking reads would never return here)."""
    d = tmp_path / "archive"
    cap = LiveCapture(pair, d, "--rotate-seconds", "1", "--align").start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(finals(d)) < 3:
        time.sleep(0.1)
    assert cap.stop() == 0, cap.log_text()
    files = finals(d)
    assert len(files) >= 3
    for f in files:
        assert f.read_bytes()[:4] == bytes.fromhex("d4c3b2a1") and f.stat().st_size == 24
    # Aligned: every file but the first was opened on a new second.
    stamps = [parse_name(f.name).time_s for f in files]
    assert len(set(stamps[1:])) == len(stamps) - 1
    assert "(time): 0 packets" in cap.log_text()


def _tcpdump_times(path: Path) -> list[int]:
    """Every packet's time (ns) as tcpdump reads the file, in file order."""
    out = subprocess.run(
        ["tcpdump", "-tt", "-nn", "-r", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    times = []
    for line in out.splitlines():
        ns = _ns(line.split(" ", 1)[0])
        assert ns is not None, line
        times.append(ns)
    return times


def _head_size(path: Path, packets: int, tmp: Path) -> int:
    """Bytes of the file's first ``packets`` records, as tcpdump writes them."""
    if packets == 0:
        return 24
    head = tmp / "head.pcap"
    subprocess.run(
        ["tcpdump", "-r", str(path), "-c", str(packets), "-w", str(head)],
        capture_output=True,
        check=True,
    )
    return head.stat().st_size


def _capinfos_bytes(path: Path) -> int:
    """Captured packet bytes of a file (capinfos's data size)."""
    out = subprocess.run(
        ["capinfos", "-T", "-r", "-d", "-M", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    return int(out.split("\t")[1])


def test_libpcap_engine_indexes_while_writing(pair: VethPair, tmp_path: Path) -> None:
    """The libpcap engine's catalogue rows and time index, built from dispatch
    boundaries without scanning the file: packets and bytes are capinfos's,
    every entry points at a record boundary (tcpdump writing that many packets
    ends there) with tcpdump's time for that record, and the entries bound the
    times of their segments."""
    from bulk.archive.scan import INDEX_BYTES  # noqa: PLC0415
    from tests.faults.traffic import write_numbered_pcap  # noqa: PLC0415

    sent = tmp_path / "sent.pcap"
    count = 6000
    size = write_numbered_pcap(sent, count)
    assert size > 3 * INDEX_BYTES  # several index entries in one file
    d = tmp_path / "archive"
    cap = LiveCapture(pair, d, "--engine", "libpcap", "--rotate-bytes", "2M").start()
    try:
        pair.replay(sent, pps=20000)
        cap.wait_packets(count)
    finally:
        assert cap.stop() == 0, cap.log_text()
    assert "(libpcap engine," in cap.log_text()
    files = finals(d)
    assert len(files) >= 2
    assert sum(capinfos(f)[0] for f in files) == count
    check_catalogue(d, files)
    entries_seen = 0
    with Catalogue.open(str(d)) as cat:
        for f in files:
            rec = cat.get(f.name)
            assert rec is not None
            assert rec.bytes == _capinfos_bytes(f)
            assert rec.raw_size == f.stat().st_size
            times = _tcpdump_times(f)
            entries = cat.time_index(f.name)
            assert entries[0].packet == 0 and entries[0].offset == 24
            for i, e in enumerate(entries):
                entries_seen += 1
                assert e.offset == _head_size(f, e.packet, tmp_path), (f.name, e)
                assert e.ts_ns == times[e.packet], (f.name, e)
                stop = entries[i + 1].packet if i + 1 < len(entries) else len(times)
                segment = times[e.packet : stop]
                assert e.min_ns <= min(segment) and max(segment) <= e.max_ns, (f.name, e)
                if i:
                    assert e.offset - entries[i - 1].offset >= INDEX_BYTES
    assert entries_seen > len(files)  # some file has more than its first entry


@pytest.mark.parametrize("engine", ["pcapy", "auto"])
def test_engines_capture_what_was_sent(
    pair: VethPair, expected: list[str], tmp_path: Path, engine: str
) -> None:
    """The pcapy-ng fallback engine (and auto) capture, rotate and catalogue alike."""
    d = tmp_path / "archive"
    cap = LiveCapture(pair, d, "--engine", engine, "--rotate-bytes", "128K").start()
    try:
        pair.replay(*SENT, pps=PPS)
        cap.wait_packets(len(expected))
    finally:
        assert cap.stop() == 0, cap.log_text()
    used = "pcapy" if engine == "pcapy" else "libpcap"
    assert f"({used} engine," in cap.log_text()
    files = finals(d)
    assert len(files) >= 2 and not opens(d)
    assert tcpdump_text(files) == expected
    check_catalogue(d, files)
    with Catalogue.open(str(d)) as cat:
        for f in files:
            rec = cat.get(f.name)
            assert rec is not None and rec.bytes == _capinfos_bytes(f)
