"""Bugs the fault and fuzz suites found, each pinned by a small deterministic test."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from bulk.archive.repair import repair_open_file
from bulk.archive.scan import scan_trace
from bulk.errors import TraceError
from bulk.trace import open_trace
from tests.conftest import DATA, tcpdump_count


def test_scan_of_a_pcap_whose_records_exceed_its_snaplen(tmp_path: Path) -> None:
    """libpcap cuts such records to the snaplen: offsets computed from its lengths
    were wrong, and the repair of an open file then cut it mid-record (tcpdump:
    'truncated dump file'). The scan must follow the lengths on disk."""
    data = bytearray((DATA / "zeek-http-get.pcap").read_bytes())
    struct.pack_into("<I", data, 16, 1)  # snaplen 1, records of 66..1514 bytes
    path = tmp_path / "bulk-20260101T000000Z-eth0-000001.pcap.open"
    path.write_bytes(bytes(data))
    with open_trace(str(path)) as r:
        expected = sum(1 for _ in r)
    scan = scan_trace(str(path), stop_at_zero=True)
    assert (scan.packets, scan.end_offset, scan.error) == (expected, len(data), None)
    done = repair_open_file(str(path), 1, 262144)
    final = Path(done.final_path)
    assert final.read_bytes() == bytes(data)  # nothing cut
    assert tcpdump_count(final) == expected


def test_repair_of_a_zero_filled_header(tmp_path: Path) -> None:
    """After a power loss a file's length may reach the disk but not its first
    block: the header reads as zeros. The repair used to refuse the file ('not a
    pcap'), leaving it open for ever; it now writes the capture's header."""
    path = tmp_path / "bulk-20260101T000000Z-eth0-000001.pcap.open"
    path.write_bytes(bytes(4096))
    done = repair_open_file(str(path), 1, 262144)
    final = Path(done.final_path)
    assert done.wrote_header and final.stat().st_size == 24
    assert tcpdump_count(final) == 0


def test_pcapng_option_running_past_its_block(tmp_path: Path) -> None:
    """An interface block whose if_tsresol option claims bytes the block does not
    hold raised IndexError (a traceback) from the reader."""
    shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    shb = struct.pack("<II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body
    shb += struct.pack("<I", 12 + len(shb_body))
    # IDB: linktype 1, snaplen 0, then option 9 (if_tsresol) claiming 4 bytes,
    # with the block ending right after the option header.
    idb_body = struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 9, 4)
    blen = 12 + len(idb_body)
    idb = struct.pack("<II", 1, blen) + idb_body + struct.pack("<I", blen)
    path = tmp_path / "t.pcapng"
    path.write_bytes(shb + idb)
    try:
        with open_trace(str(path)) as r:
            assert list(r) == []
    except TraceError:
        pass


def test_double_dash_ends_the_options(tmp_path: Path) -> None:
    """'bulk info -- -x.pcap' said 'the following arguments are required':
    argparse's intermixed parsing drops what follows '--'."""
    from tests.faults.harness import run_cli  # noqa: PLC0415

    res = run_cli(["info", "--", str(DATA / "dns_udp.pcap")])
    assert res.status == 0, res.stderr


def test_an_error_quoting_a_newline_stays_one_line(tmp_path: Path) -> None:
    """A user value with a newline (a file name, an interface) split the error
    line in two."""
    from tests.faults.harness import run_cli  # noqa: PLC0415

    res = run_cli(["slice", "0", str(tmp_path / "no\nsuch.pcap"), "-w", str(tmp_path / "o")])
    assert res.status == 2 and len(res.stderr_lines) == 1, res.stderr
    assert "no\\nsuch.pcap" in res.stderr


def test_rotate_refuses_an_interface_name_with_a_slash(tmp_path: Path) -> None:
    """'bulk rotate -i x/../a' built its log path from the name: a traceback
    (FileNotFoundError), and a path outside DIR/.bulk for a name with '..'."""
    from tests.faults.harness import run_cli  # noqa: PLC0415

    res = run_cli(["rotate", "-i", "x/../a", "--dir", str(tmp_path / "d")])
    assert res.status != 0 and res.stderr_lines == [
        "bulk rotate: 'x/../a': not usable as an interface name"
    ]


@pytest.mark.parametrize("command", ["extract", "slice", "backdoor", "contents"])
def test_an_archive_whose_open_file_is_still_empty(tmp_path: Path, command: str) -> None:
    """Right after a rotation the open file is empty until libpcap writes its
    buffered header (on a quiet link, for minutes): 'bulk extract --dir' and
    'bulk slice --dir' failed ('empty file, not a trace', exit 2)."""
    import shutil  # noqa: PLC0415

    from tests.faults.harness import run_cli  # noqa: PLC0415

    d = tmp_path / "archive"
    d.mkdir()
    closed = d / "bulk-20260101T000001Z-eth0-000001.pcap"
    shutil.copy(DATA / "zeek-http-get.pcap", closed)
    (d / "bulk-20260101T000002Z-eth0-000002.pcap.open").write_bytes(b"")
    out = tmp_path / "out"
    argv = {
        "extract": ["extract", "--dir", str(d), "-w", str(out)],
        "slice": ["slice", "0", "--dir", str(d), "-w", str(out)],
        "backdoor": ["backdoor", "--dir", str(d), "--json"],
        "contents": ["contents", "-q", "--dir", str(d), "-o", str(out)],
    }[command]
    res = run_cli(argv)
    assert res.status == 0, res.stderr
    if command in ("extract", "slice"):
        assert tcpdump_count(out) == tcpdump_count(closed)


def test_catalogue_rebuild_keeps_the_row_of_an_empty_open_file(tmp_path: Path) -> None:
    from bulk.archive.catalogue import Catalogue  # noqa: PLC0415

    (tmp_path / "bulk-20260101T000002Z-eth0-000002.pcap.open").write_bytes(b"")
    with Catalogue.open(str(tmp_path)) as cat:
        report = cat.rebuild()
        assert report.open_files == 1
        assert cat.get("bulk-20260101T000002Z-eth0-000002.pcap.open") is not None


def test_a_zstd_frame_header_declaring_gigabytes_is_not_believed(tmp_path: Path) -> None:
    """One flipped bit in a frame header (the content-size field grows) made the
    seekable reader allocate what it declares: MemoryError (a traceback), or
    gigabytes of memory for a frame the index says holds 2 KiB."""
    from bulk.trace import SeekableTrace  # noqa: PLC0415
    from tests.faults.mutate import compressed_bases  # noqa: PLC0415

    base = next(b for b in compressed_bases(tmp_path) if b.name == "zeek-http-get.pcap.zst")
    data = bytearray(base.data)
    assert data[:4] == b"\x28\xb5\x2f\xfd"
    data[4] |= 0x80  # frame header descriptor: an 8-byte frame content size
    path = tmp_path / "bad.pcap.zst"
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError), SeekableTrace.open(str(path)) as trace:
        list(trace.packets_in(0, len(trace.frames)))


def _pcapng_far_future(path: Path) -> None:
    """One Ethernet packet stamped 2^63 microseconds after the epoch (year ~292,000)."""
    shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    shb = struct.pack("<II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body
    shb += struct.pack("<I", 12 + len(shb_body))
    idb_body = struct.pack("<HHI", 1, 0, 0)
    idb = (
        struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 12 + len(idb_body))
    )
    frame = (DATA / "zeek-http-get.pcap").read_bytes()[40:118]  # its first frame, 78 bytes
    ticks = 1 << 63
    epb_body = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
    epb_body += frame + bytes(-len(frame) % 4)
    epb = (
        struct.pack("<II", 6, 12 + len(epb_body)) + epb_body + struct.pack("<I", 12 + len(epb_body))
    )
    path.write_bytes(shb + idb + epb)


def test_packet_times_beyond_year_9999(tmp_path: Path) -> None:
    """A damaged pcapng's times can lie centuries ahead: the ISO formatting
    raised ValueError (contents summary, info) and the catalogue OverflowError
    (SQLite holds 64 bits): tracebacks from 'bulk contents' and 'bulk index'."""
    from bulk.summary import iso_ns  # noqa: PLC0415
    from tests.faults.harness import run_cli  # noqa: PLC0415

    assert iso_ns(10**21) == "1000000000000.000000000"
    trace = tmp_path / "far.pcapng"
    _pcapng_far_future(trace)
    for argv in (
        ["contents", "-q", "-r", str(trace), "-o", str(tmp_path / "out")],
        ["info", str(trace)],
        ["index", "-q", str(trace)],
    ):
        res = run_cli(argv)
        assert res.status == 0, (argv, res.stderr)


def test_slicing_a_zstd_frame_header_declaring_gigabytes(tmp_path: Path) -> None:
    """The slicer's own frame readers believed the frame header too (MemoryError)."""
    from tests.faults.harness import run_cli  # noqa: PLC0415
    from tests.faults.mutate import compressed_bases  # noqa: PLC0415

    base = next(b for b in compressed_bases(tmp_path) if b.name == "zeek-http-get.pcap.zst")
    data = bytearray(base.data)
    data[4] |= 0x80
    path = tmp_path / "bad.pcap.zst"
    path.write_bytes(bytes(data))
    res = run_cli(["slice", "0", str(path), "-w", str(tmp_path / "out")])
    assert res.status == 2 and len(res.stderr_lines) == 1, res.stderr


def test_retention_killed_between_deleting_a_trace_and_its_row(tmp_path: Path) -> None:
    """Retention deletes a trace, then its catalogue row. Killed in between, it left
    a row naming a file that was gone, and later runs kept it for ever (the
    catalogue no longer matched the files; found by killing compress under
    load). The next run now forgets such rows."""
    import os  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from bulk.archive.catalogue import Catalogue  # noqa: PLC0415
    from bulk.compress.safe import CRASH_ENV  # noqa: PLC0415

    d = tmp_path / "archive"
    d.mkdir()
    for k, src in enumerate(("zeek-http-get.pcap", "zeek-smtp.pcap", "ssh-on-port-80.pcap")):
        shutil.copy(DATA / src, d / f"bulk-2026010{k + 1}T000000Z-eth0-00000{k + 1}.pcap")

    def bulk(*args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        if crash:
            env[CRASH_ENV] = crash
        return subprocess.run([sys.executable, "-m", "bulk", *args], capture_output=True,
                              text=True, env=env, timeout=120, check=False)  # fmt: skip

    def rows_without_file() -> list[str]:
        with Catalogue.open(str(d)) as cat:
            return [r.name for r in cat.files() if not (d / r.name).exists()]

    assert bulk("index", "--dir", str(d), "--rebuild").returncode == 0
    retention = ("compress", "--dir", str(d), "--max-disk", "1K")  # deletes every trace
    killed = bulk(*retention, crash="retention-after-unlink")
    assert killed.returncode == 137, killed.stderr
    assert len(rows_without_file()) == 1  # the state the kill left
    again = bulk(*retention)
    assert again.returncode == 0, again.stderr
    assert rows_without_file() == []
    with Catalogue.open(str(d)) as cat:
        assert [r.name for r in cat.files()] == sorted(p.name for p in d.iterdir()
                                                      if not p.name.startswith("."))  # fmt: skip


def test_compressing_packet_times_beyond_64_bits(tmp_path: Path) -> None:
    """The same damaged pcapng compressed: the seekable index packs times in 64
    bits and 'bulk compress' died with struct.error (a traceback; found by the
    short fuzz run). Times are clamped there now; the trace round-trips."""
    from tests.faults.harness import run_cli  # noqa: PLC0415

    trace = tmp_path / "far.pcapng"
    _pcapng_far_future(trace)
    original = trace.read_bytes()
    res = run_cli(["compress", "--dir", str(tmp_path), "--older-than", "0"])
    assert res.status == 0, res.stderr
    packed = tmp_path / "far.pcapng.zst"
    out = subprocess.run(["zstd", "-dc", str(packed)], capture_output=True, check=True)
    assert out.stdout == original


def test_slicing_packet_times_beyond_32_bit_seconds(tmp_path: Path) -> None:
    """The same damaged pcapng sliced to pcap: a record's seconds did not fit the
    32-bit field and 'bulk slice' died with struct.error (a traceback; found by
    the long fuzz run). They wrap to 32 bits as libpcap's dumper does: the
    records are tcpdump -w's, byte for byte."""
    from tests.faults.harness import run_cli  # noqa: PLC0415

    trace = tmp_path / "far.pcapng"
    _pcapng_far_future(trace)
    ours, theirs = tmp_path / "bulk.pcap", tmp_path / "tcpdump.pcap"
    res = run_cli(["slice", "-w", str(ours), str(trace)])
    assert res.status == 0, res.stderr
    subprocess.run(["tcpdump", "-r", str(trace), "-w", str(theirs)], capture_output=True,
                   check=True)  # fmt: skip
    assert ours.read_bytes()[24:] == theirs.read_bytes()[24:]
