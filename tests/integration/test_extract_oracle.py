"""`bulk extract` against tcpdump, packet for packet, on every bundled real trace.

tcpdump is the oracle: for every trace and every filter, ``bulk extract -r FILE
-w OUT FILTER`` must write the very file ``tcpdump -r FILE -w OUT FILTER``
writes (header and records, byte for byte). For a nanosecond trace bulk keeps
nanoseconds, so the oracle is ``tcpdump --time-stamp-precision=nano``.
tcpdump stops at a truncated record after writing every packet before it
(exit 1); bulk writes the same packets and exits 3.

Archive queries are compared with tcpdump run on each file, as multisets of
records (tcpdump cannot merge), plus the time order of bulk's output.
"""

from __future__ import annotations

import gzip
import ipaddress
import os
import pty
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bulk.archive.hostindex import build_index, write_index_for
from bulk.cli import main as bulk_main
from bulk.trace import open_trace
from tests.conftest import BULK, DATA, TRACE_IDS, TRACES, require_tool, run_bulk

pytestmark = pytest.mark.integration

FILTERS = [
    "",
    "tcp",
    "udp",
    "ip",
    "ip6",
    "arp or icmp or icmp6",
    "not tcp",
    "tcp or udp",
    "ip6 and tcp",
    "vlan",
    "vlan and tcp port 80",
    "vlan and vlan and host 192.168.1.1",
    "mpls and tcp",
    "greater 200",
    "tcp[13] & 2 != 0",
    "port 80 or port 22 or port 25",
    "udp port 53",
    "host {h4}",
    "not host {h4}",
    "host {h4} and port {p}",
    "src host {h4} or dst port 53",
    "net {n16}",
    "host {h4} or {h4b} and tcp",
    "tcp port {p} or {p2}",
    "host {h6}",
    "ip6 net {n6}",
    "portrange 1-1024 and not port 80",
]


def pcap_records(raw: bytes) -> tuple[bytes, list[bytes]]:
    """Header and whole records of a little- or big-endian pcap (independent parser)."""
    header, pos, out = raw[:24], 24, []
    endian = "<" if raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    while pos + 16 <= len(raw):
        caplen = struct.unpack_from(endian + "I", raw, pos + 8)[0]
        out.append(raw[pos : pos + 16 + caplen])
        pos += 16 + caplen
    return header, out


def record_time(rec: bytes, nano: bool) -> int:
    sec, frac = struct.unpack_from("<II", rec)
    return sec * 1_000_000_000 + frac * (1 if nano else 1000)


def tcpdump_write(src: Path, out: Path, expr: str, nano: bool) -> int:
    exe = require_tool("tcpdump")
    cmd = [exe, "-r", str(src), "-w", str(out)]
    if nano:
        cmd.insert(1, "--time-stamp-precision=nano")
    if expr:
        cmd.append(expr)
    return subprocess.run(cmd, capture_output=True, check=False).returncode


def bulk_extract(*args: str | Path) -> int:
    return bulk_main(["extract", *map(str, args)])


def is_nano(path: Path) -> bool:
    with open_trace(str(path)) as r:
        return r.nanosecond


def fill(template: str, trace: Path) -> str | None:
    """Put addresses and ports found in the trace into a filter template."""
    ix = build_index(str(trace))
    v4 = [ipaddress.IPv4Address(a) for a in ix.addr4_values()]
    v6 = [ipaddress.IPv6Address(a) for a in ix.addr6_values()]
    ports = sorted({p for proto in (6, 17, 132) for p in ix.port_values(proto)})
    values = {
        "h4": str(v4[0]) if v4 else "192.0.2.1",
        "h4b": str(v4[-1]) if v4 else "192.0.2.2",
        "n16": str(ipaddress.ip_network(f"{v4[0]}/16", strict=False)) if v4 else "10.0.0.0/8",
        "p": str(ports[0]) if ports else "80",
        "p2": str(ports[-1]) if ports else "443",
        "h6": str(v6[0]) if v6 else "2001:db8::1",
        "n6": str(ipaddress.ip_network(f"{v6[0]}/64", strict=False)) if v6 else "2001:db8::/32",
    }
    return template.format(**values)


@pytest.mark.parametrize("trace", TRACES, ids=TRACE_IDS)
def test_extract_equals_tcpdump(trace: Path, tmp_path: Path) -> None:
    nano = is_nano(trace)
    failures = []
    for template in FILTERS:
        expr = fill(template, trace)
        assert expr is not None
        ours, theirs = tmp_path / "bulk.pcap", tmp_path / "tcpdump.pcap"
        ours.unlink(missing_ok=True)
        theirs.unlink(missing_ok=True)
        rc_td = tcpdump_write(trace, theirs, expr, nano)
        rc = bulk_extract("-r", trace, "-w", ours, expr)
        if not theirs.exists():
            # libpcap refuses the filter for this link type (e.g. vlan on SLL):
            # so does bulk, before writing anything.
            if rc != 2 or ours.exists():
                failures.append(f"{expr!r}: tcpdump refused it, bulk exited {rc}")
            continue
        if ours.read_bytes() != theirs.read_bytes():
            failures.append(f"{expr!r}: output differs")
        expected_rc = 0 if rc_td == 0 else 3
        if rc != expected_rc:
            failures.append(f"{expr!r}: exit {rc}, tcpdump exited {rc_td}")
    assert not failures, failures


@pytest.mark.parametrize("trace", TRACES, ids=TRACE_IDS)
@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_compressed_equals_tcpdump_on_original(trace: Path, kind: str, tmp_path: Path) -> None:
    nano = is_nano(trace)
    if kind == "zstd":
        comp = tmp_path / (trace.name + ".zst")
        subprocess.run([require_tool("zstd"), "-q", "-f", str(trace), "-o", str(comp)], check=True)
    else:
        comp = tmp_path / (trace.name + ".gz")
        comp.write_bytes(gzip.compress(trace.read_bytes()))
    for template in ("", "tcp", "host {h4} and port {p}", "not udp"):
        expr = fill(template, trace)
        assert expr is not None
        ours, theirs = tmp_path / "bulk.pcap", tmp_path / "tcpdump.pcap"
        rc_td = tcpdump_write(trace, theirs, expr, nano)
        rc = bulk_extract("-r", comp, "-w", ours, expr)
        assert ours.read_bytes() == theirs.read_bytes(), expr
        assert rc == (0 if rc_td == 0 else 3), expr


def test_stdin_and_stdout(tmp_path: Path) -> None:
    trace = DATA / "zeek-smtp.pcap"
    theirs = tmp_path / "t.pcap"
    tcpdump_write(trace, theirs, "port 25", nano=False)
    proc = run_bulk("extract", "-r", "-", "port 25", input=trace.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == theirs.read_bytes()


def test_refuses_terminal_and_bad_filter(tmp_path: Path) -> None:
    trace = DATA / "zeek-smtp.pcap"
    proc = run_bulk("extract", "-r", trace, "-w", tmp_path / "o.pcap", "host 1.2.3.4 and")
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "syntax error" in lines[0]
    assert not (tmp_path / "o.pcap").exists()
    # A pseudo-terminal on stdout: refused with one line, nothing written to it.
    master, slave = pty.openpty()
    try:
        proc2 = subprocess.run(
            [*BULK, "extract", "-r", str(trace)],
            stdout=slave,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
        os.set_blocking(master, False)
        try:
            written = os.read(master, 4096)
        except BlockingIOError:
            written = b""
    finally:
        os.close(master)
        os.close(slave)
    assert proc2.returncode == 2
    assert b"terminal" in proc2.stderr and len(proc2.stderr.strip().splitlines()) == 1
    assert written == b""


# -- archives -----------------------------------------------------------------------------

ETHERNET_MICRO = [
    "zeek-smtp.pcap",
    "zeek-http-get.pcap",
    "http-on-port-5432.pcap",
    "ssh-on-port-80.pcap",
    "arkime-v6-http.pcap",
    "http-vlan-0.pcap",
    "irc-dcc-send.pcapng",
    "pptp.pcap",
    "zeek-ftp-ipv6.pcap",
]


def make_archive(root: Path, compress: tuple[str, ...] = ()) -> list[Path]:
    """An archive directory: real traces, one of them split in three (rotations)."""
    root.mkdir()
    files = []
    for name in ETHERNET_MICRO:
        dst = root / name
        shutil.copy(DATA / name, dst)
        files.append(dst)
    # zeek-ssh-single-conn.pcap in three rotated pieces, as a capture writes them.
    editcap = require_tool("editcap")
    subprocess.run(
        [editcap, "-c", "40", str(DATA / "zeek-ssh-single-conn.pcap"), str(root / "rot.pcap")],
        check=True,
    )
    files.extend(sorted(root.glob("rot_*.pcap")))
    for f in list(files):
        if f.name.startswith(compress) and compress:
            subprocess.run([require_tool("zstd"), "-q", "--rm", str(f)], check=True)
            files[files.index(f)] = f.with_name(f.name + ".zst")
    return files


def oracle_records(files: list[Path], expr: str, tmp: Path) -> list[bytes]:
    records: list[bytes] = []
    for i, f in enumerate(files):
        src = f
        if f.suffix == ".zst":
            src = tmp / f"plain{i}.pcap"
            subprocess.run(
                [require_tool("zstd"), "-q", "-d", "-f", str(f), "-o", str(src)], check=True
            )
        out = tmp / f"td{i}.pcap"
        tcpdump_write(src, out, expr, nano=False)
        records.extend(pcap_records(out.read_bytes())[1])
    return records


ARCHIVE_FILTERS = [
    "",
    "tcp port 25",
    "host 141.142.228.5",
    "ip6",
    "vlan or udp",
    "host 192.0.2.99",
    "not tcp",
]


@pytest.mark.parametrize("indexed", [False, True], ids=["no-index", "indexed"])
def test_archive_equals_tcpdump_per_file(tmp_path: Path, indexed: bool) -> None:
    files = make_archive(tmp_path / "arch", compress=("zeek-http-get.pcap", "rot_00001_"))
    if indexed:
        for f in files:
            write_index_for(str(f))
    for expr in ARCHIVE_FILTERS:
        out = tmp_path / "bulk.pcap"
        assert bulk_extract("--dir", tmp_path / "arch", "-w", out, expr) == 0
        header, ours = pcap_records(out.read_bytes())
        assert header[20:24] == b"\x01\x00\x00\x00"  # Ethernet
        expected = oracle_records(files, expr, tmp_path)
        assert sorted(ours) == sorted(expected), expr
        times = [record_time(r, nano=False) for r in ours]
        assert times == sorted(times), expr  # every input is time-ordered


def test_archive_window_and_truncated_member(tmp_path: Path) -> None:
    files = make_archive(tmp_path / "arch")
    cut = tmp_path / "arch" / "zeek-smtp-cut-mid-packet.pcap"
    shutil.copy(DATA / cut.name, cut)
    files.append(cut)
    for f in files:
        write_index_for(str(f))
    start, end = 1_254_722_767, 1_437_831_800  # seconds; several files fall outside
    out = tmp_path / "bulk.pcap"
    rc = bulk_extract(
        "--dir", tmp_path / "arch", "--start", str(start), "--end", f"{end}.5", "-w", out, "tcp"
    )
    assert rc == 3  # the cut member: every packet before the cut, then exit 3
    _h, ours = pcap_records(out.read_bytes())
    expected = [
        r
        for r in oracle_records(files, "tcp", tmp_path)
        if start * 10**9 <= record_time(r, False) <= end * 10**9 + 500_000_000
    ]
    assert ours and sorted(ours) == sorted(expected)


def test_archive_changing_under_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Listed, then rotated (X.pcap.open -> X.pcap), compressed (X.pcap -> X.pcap.zst)
    and deleted by retention before being read: the moved traces are followed, the
    deleted one is skipped with a warning, exit 0."""
    from bulk.archive import listing  # noqa: PLC0415

    d = tmp_path / "arch"
    d.mkdir()
    shutil.copy(DATA / "zeek-http-get.pcap", d / "a.pcap")
    shutil.copy(DATA / "zeek-smtp.pcap", d / "b.pcap")
    shutil.copy(DATA / "ssh-on-port-80.pcap", d / "c.pcap.open")
    real = listing.traces_in_dir

    def racing(directory: str, include_open: bool = False) -> list[str]:
        found = real(directory, include_open=include_open)
        subprocess.run([require_tool("zstd"), "-q", "--rm", str(d / "a.pcap")], check=True)
        os.unlink(d / "b.pcap")
        os.rename(d / "c.pcap.open", d / "c.pcap")
        return found

    monkeypatch.setattr(listing, "traces_in_dir", racing)
    out = tmp_path / "x.pcap"
    assert bulk_extract("--dir", d, "-w", out, "tcp") == 0
    assert "b.pcap: deleted since listed; skipped" in capsys.readouterr().err
    expected = oracle_records(
        [DATA / "zeek-http-get.pcap", DATA / "ssh-on-port-80.pcap"], "tcp", tmp_path
    )
    assert sorted(pcap_records(out.read_bytes())[1]) == sorted(expected)


def test_trace_moved_between_planning_and_reading(tmp_path: Path) -> None:
    from bulk.errors import Vanished  # noqa: PLC0415
    from bulk.extraction import describe, make_plan, write_plan  # noqa: PLC0415
    from bulk.timespec import TimeWindow  # noqa: PLC0415

    d = tmp_path / "arch"
    d.mkdir()
    for name in ("zeek-http-get.pcap", "zeek-smtp.pcap"):
        shutil.copy(DATA / name, d / name)
    paths = [str(d / "zeek-http-get.pcap"), str(d / "zeek-smtp.pcap")]
    window = TimeWindow(None, None)
    plan = make_plan(paths, "tcp", window, inputs=[describe(p, True) for p in paths])
    subprocess.run([require_tool("zstd"), "-q", "--rm", paths[0]], check=True)
    os.unlink(paths[1])
    with open(tmp_path / "x.pcap", "wb") as out:
        report = write_plan(plan, "tcp", window, out)
    assert [type(e) for e in report.errors] == [Vanished]
    expected = oracle_records([DATA / "zeek-http-get.pcap"], "tcp", tmp_path)
    assert pcap_records((tmp_path / "x.pcap").read_bytes())[1] == expected


def test_indexed_traces_overlapping_in_time_are_merged(tmp_path: Path) -> None:
    """Two indexed traces holding alternate packets of one capture (two capture
    workers): they overlap in time, so they must be merged, not written one after
    the other (which the indexes allow only for disjoint time ranges). The
    result is the original capture filtered by tcpdump, in its order."""
    src = DATA / "zeek-ssh-single-conn.pcap"
    header, records = pcap_records(src.read_bytes())
    times = [record_time(r, nano=False) for r in records]
    assert times == sorted(times) and len(set(times)) == len(times)  # a strict order
    d = tmp_path / "arch"
    d.mkdir()
    for k in (0, 1):
        part = d / f"w{k}.pcap"
        part.write_bytes(header + b"".join(records[k::2]))
        write_index_for(str(part))
    for expr in ("", "tcp", "host 192.168.1.1"):
        td = tmp_path / "td.pcap"
        tcpdump_write(src, td, expr, nano=False)
        out = tmp_path / "bulk.pcap"
        assert bulk_extract("--dir", d, "-w", out, expr) == 0
        assert pcap_records(out.read_bytes())[1] == pcap_records(td.read_bytes())[1], expr
