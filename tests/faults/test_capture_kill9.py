"""kill -9 of ``bulk capture`` at random moments, 20 times in a row, during traffic.

Every frame sent carries its number (tests/faults/traffic.py), so the archive
is checked packet by packet against what tcpreplay sent:

- every restart repairs and finalises the file left open, and tcpdump reads
  every trace of the archive without error;
- the catalogue agrees with the files (rows, states, packet counts, sizes);
- the sequence numbers run 1..N without a gap or a repeat, and no final file
  ever changes once it exists (inode, size, SHA-256): nothing is overwritten;
- the packets kept are exactly the packets sent minus, at each kill, one run
  of consecutive packets: those in flight. In flight means (a) still in the
  kernel ring (a TPACKET_V3 block is handed over at most 100 ms after its
  first packet and the loop drains it at once), (b) handed to libpcap's
  dumper but still in its stdio buffer (8 KiB: at most 8192/16 records), (c)
  the record being written when the process died (one), and (d) every packet
  sent between the kill and the moment the next capture's socket exists (the
  restart gap, measured). The bound per kill is therefore
  2 x rate x (gap + 0.1 s) + 8192/16 + 1 (twice the nominal rate because
  tcpreplay catches up in bursts on a loaded machine). Loss anywhere else
  (several runs per kill, duplicates, reordering) fails the test.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tcpdump_count
from tests.faults.harness import LONG
from tests.faults.live import (
    check_catalogue,
    digest,
    finals,
    opens,
    wait_archivers,
)
from tests.faults.traffic import packet_numbers, runs, tcpreplay_sent, write_numbered_pcap
from tests.integration.vethnet import LiveCapture, VethPair, live_pair

pytestmark = pytest.mark.integration

KILLS = 100 if LONG else 20
RATE = 1000  # packets per second
MAX_RUN_S = 0.8  # a capture lives 0..MAX_RUN_S seconds before it is killed
IN_FLIGHT_FIXED = 8192 // 16 + 1  # dumper buffer (records of >= 16 bytes) + one cut record
ROTATE = "64K"  # frequent rotations: kills land on them too


@pytest.fixture
def pair() -> Iterator[VethPair]:
    yield from live_pair("tcpreplay", "tcpdump")


def test_kill9_at_random_moments_during_traffic(pair: VethPair, tmp_path: Path) -> None:
    seed = int(os.environ.get("BULK_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed {seed} (BULK_FAULT_SEED={seed} repeats this run)")
    sent_file = tmp_path / "numbered.pcap"
    write_numbered_pcap(sent_file, 65000)
    d = tmp_path / "archive"
    snapshots: dict[str, tuple[int, int, str]] = {}
    left_open: set[str] = set()
    gaps: list[float] = []
    captures: list[LiveCapture] = []
    replay: subprocess.Popen[str] | None = None
    try:
        # The first capture listens before the first frame is sent.
        first = LiveCapture(pair, d, "--rotate-bytes", ROTATE)
        captures.append(first)
        first.start()
        replay = subprocess.Popen(
            pair.ns_cmd(
                pair.sender_ns, "tcpreplay", "--pps", str(RATE), "-i", pair.sender_dev,
                str(sent_file),
            ),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for k in range(KILLS):
            time.sleep(rng.uniform(0.0, MAX_RUN_S))
            captures[-1].stop(signal.SIGKILL)
            killed = time.monotonic()
            if rng.random() < 0.5:
                # Half the time the next start races the killed capture's archiver.
                wait_archivers(d)
            for name, (ino, size, _sha) in snapshots.items():
                st = (d / name).stat()
                assert (st.st_ino, st.st_size) == (ino, size), f"{name} changed after kill {k}"
            left_open |= {p.name for p in opens(d)}
            nxt = LiveCapture(pair, d, "--rotate-bytes", ROTATE)
            captures.append(nxt)
            nxt.start()
            gaps.append(time.monotonic() - killed)
            for p in finals(d):
                if p.name not in snapshots and p.name not in left_open and not _is_open(d, p):
                    snapshots[p.name] = digest(p)
        time.sleep(0.5)
        replay.send_signal(signal.SIGINT)
        out, _ = replay.communicate(timeout=60)
        time.sleep(0.5)  # the last frames reach the capture's ring
        assert captures[-1].stop() == 0, captures[-1].log_text()
    finally:
        if replay is not None and replay.poll() is None:
            replay.kill()
            replay.wait()
        for c in captures:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
    wait_archivers(d)
    sent = tcpreplay_sent(out)
    assert sent > RATE * KILLS * 0.1, f"too little traffic to mean anything: {out}"

    # Every file left open at a kill was repaired and finalised; nothing is open now.
    assert not opens(d)
    logs = "".join(c.log_text() for c in captures)
    for name in left_open:
        final = name.removesuffix(".open")
        assert (d / final).exists(), name
    repaired = {
        ln.split("repaired ", 1)[1].split(":")[0] for ln in logs.splitlines() if "repaired " in ln
    }
    assert repaired, "no repair was logged"

    # Nothing overwritten: every final file seen during the run is unchanged.
    for name, snap in snapshots.items():
        assert digest(d / name) == snap, f"{name} was modified"

    # tcpdump reads every trace; sequence 1..N; catalogue rows agree with files.
    files = finals(d)
    counts = {p.name: tcpdump_count(p) for p in files}
    from bulk.archive.naming import parse_name  # noqa: PLC0415

    seqs = [parse_name(p.name).seq for p in files]  # type: ignore[union-attr]
    assert seqs == list(range(1, len(files) + 1))
    check_catalogue(d, counts)

    # Packet by packet: no duplicate, no reordering, loss only at kills, bounded.
    numbers = packet_numbers(files)
    assert len(numbers) == sum(counts.values())
    assert numbers == sorted(set(numbers)), "duplicated or reordered packets"
    assert numbers[-1] <= sent  # (sent + 1 when tcpreplay was interrupted mid-packet)
    lost = runs(set(range(min(sent, numbers[-1] + 1))) - set(numbers))
    bounds = [2 * RATE * (g + 0.1) + IN_FLIGHT_FIXED for g in gaps]
    print(
        f"{KILLS} kills, {sent} sent, {len(numbers)} kept, {sent - len(numbers)} lost in "
        f"{len(lost)} runs (sizes {[b - a + 1 for a, b in lost]}); restart gaps "
        f"{min(gaps):.2f}..{max(gaps):.2f} s; {len(files)} files, {len(left_open)} repaired"
    )
    assert len(lost) <= KILLS, "packets lost away from the kills"
    assert all(b - a + 1 <= max(bounds) for a, b in lost), (lost, bounds)
    assert sum(b - a + 1 for a, b in lost) <= sum(bounds)


def _is_open(d: Path, p: Path) -> bool:
    return (d / (p.name + ".open")).exists()
