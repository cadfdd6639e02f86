"""bulk slice against tcpslice (the oracle) and against a naive full-scan filter.

Every bundled trace, a multi-file archive split by tcpdump -C and by editcap,
duplicates across files, compressed copies (gzip, single-frame zstd,
multi-frame zstd with and without a seek table), stdin and pcapng.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import pty
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulk.cli import main as cli_main
from bulk.slicing import slicer
from bulk.slicing.sources import StreamSource
from bulk.timespec import resolve_window
from bulk.trace import open_trace
from tests.conftest import BULK, DATA, TRACES, require_tool, run_bulk
from tests.slicefiles import build_trace, read_pcap, zstd_frames

pytestmark = pytest.mark.integration

NS = 1_000_000_000
Rec = tuple[int, int, bytes]  # ts_ns, wirelen, data


def _magic(path: Path) -> tuple[str, bool] | None:
    head = path.read_bytes()[:4]
    for endian in ("<", ">"):
        (m,) = struct.unpack(endian + "I", head)
        if m in (0xA1B2C3D4, 0xA1B23C4D):
            return endian, m == 0xA1B23C4D
    return None


def pcap_records(path: Path) -> list[Rec]:
    """Records of a pcap file (independent parser), times in ns."""
    info = _magic(path)
    assert info is not None, f"{path} is not pcap"
    mult = 1 if info[1] else 1000
    return [(s * NS + f * mult, w, d) for s, f, w, d in read_pcap(path)[1]]


def all_records(path: Path) -> list[Rec]:
    """Every packet of any trace, in file order (the naive filter's input)."""
    if _magic(path) is not None:
        return pcap_records(path)
    out: list[Rec] = []
    with open_trace(str(path)) as reader:
        try:
            for p in reader:
                out.append((p.ts_ns, p.wirelen, p.data))
        except Exception:  # noqa: BLE001 - a truncated tail: keep the whole packets
            pass
    return out


def naive(records: list[Rec], start: int | None, end: int | None) -> list[Rec]:
    return [r for r in records if (start is None or r[0] >= start) and (end is None or r[0] <= end)]


def naive_slice(records: list[Rec], times: list[str]) -> list[Rec]:
    """What the window of bulk slice's START [END] arguments keeps, by plain filtering."""
    w = resolve_window(
        times[0] if times else None,
        times[1] if len(times) > 1 else None,
        records[0][0],
        records[-1][0],
    )
    return naive(records, w.start_ns, w.end_ns)


def raw(ns: int) -> str:
    """A raw time spec in microseconds (tcpslice's resolution)."""
    return f"{ns // NS}.{ns % NS // 1000:06d}"


def raw_ns(ns: int) -> str:
    return f"{ns // NS}.{ns % NS:09d}"


def tcpslice(tmp: Path, times: list[str], files: list[Path], *flags: str) -> Path | None:
    out = tmp / "tcpslice.pcap"
    proc = subprocess.run(
        ["tcpslice", *flags, "-w", str(out), *times, *map(str, files)],
        capture_output=True,
        check=False,
        env=dict(os.environ, TZ="UTC"),
    )
    return out if proc.returncode == 0 else None


def tcpslice_records(tmp: Path, times: list[str], files: list[Path], *flags: str) -> list[Rec]:
    """The records of tcpslice's output, which it must have written."""
    out = tcpslice(tmp, times, files, *flags)
    assert out is not None, f"tcpslice {' '.join(times)} failed"
    return pcap_records(out)


def bulk_slice(tmp: Path, times: list[str], files: list[Path], *flags: str) -> Path:
    """Run ``bulk slice ... -w OUT`` through the real command line, in this process
    (the subprocess tests below cover stdout, stdin and exit statuses)."""
    out = tmp / "bulk.pcap"
    status = cli_main(["slice", *flags, "-w", str(out), *times, *map(str, files)])
    assert status == 0
    return out


def _tcpslice_usable(path: Path) -> bool:
    """tcpslice reads this trace correctly: a microsecond pcap whose last packet it
    finds. It refuses pcapng and one-packet files; its tail search gives up on
    files spanning more than a year (mixed-vlan-mpls, zeek-smtp); and its search
    reads nanosecond record headers as microseconds (it writes a packet 0.13 s
    before the start of tcp-handshake-nano.pcap)."""
    info = _magic(path)
    if info is None or info[1]:
        return False
    proc = subprocess.run(
        ["tcpslice", "-R", str(path)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return False
    last = proc.stdout.split()[2]
    sec, _, frac = last.partition(".")
    return int(sec) * NS + int(frac) * 1000 == pcap_records(path)[-1][0]


def _windows(recs: list[Rec]) -> list[list[str]]:
    first, last = recs[0][0], recs[-1][0]
    span = max(last - first, 1000)
    mid = recs[len(recs) // 2][0]
    quarter = recs[len(recs) // 4][0]
    return [
        [],
        ["+0", "+0.000001"],
        [raw(quarter), raw(mid)],  # both ends on packet times: inclusive
        [raw(first + span // 3), f"+{span // 3 / NS:.6f}"],
        [raw(first - 5 * NS), raw(mid)],  # starts before the file
        [raw(mid), raw(last + 5 * NS)],  # ends after it
        [raw(last + NS), "+10"],  # after the file
        [raw(first - 10 * NS), "+5"],  # before it
        [raw(mid), raw(first)],  # end before start: empty
    ]


USABLE = [p for p in TRACES if _magic(p) is not None]


@pytest.mark.parametrize("path", USABLE, ids=[p.name for p in USABLE])
def test_every_pcap_trace_same_records_as_tcpslice(path: Path, tmp_path: Path) -> None:
    require_tool("tcpslice")
    recs = pcap_records(path)
    usable = _tcpslice_usable(path)
    for times in _windows(recs):
        ours = pcap_records(bulk_slice(tmp_path, times, [path]))
        # bulk equals the naive filter on every trace ...
        assert ours == naive_slice(recs, times), times
        if not usable:
            continue
        # ... and tcpslice's records, byte for byte.
        assert ours == tcpslice_records(tmp_path, times, [path]), times


def test_nanosecond_resolution_is_kept(tmp_path: Path) -> None:
    src = DATA / "tcp-handshake-nano.pcap"
    out = bulk_slice(tmp_path, ["+0"], [src])
    assert _magic(out) == ("<", True)
    assert pcap_records(out) == pcap_records(src)
    assert pcap_records(out)[0][0] % 1000 != 0  # real nanosecond digits survived


def test_tcpslice_oddities_we_do_better(tmp_path: Path) -> None:
    """Files tcpslice mishandles, which bulk slices whole (documented)."""
    require_tool("tcpslice")
    for name in ("mixed-vlan-mpls.pcap", "zeek-smtp.pcap", "dpkt-truncated_dns_2.pcap"):
        path = DATA / name
        ours = pcap_records(bulk_slice(tmp_path, [], [path]))
        assert ours == pcap_records(path)
        theirs = tcpslice(tmp_path, [], [path])
        assert theirs is None or len(pcap_records(theirs)) < len(ours)


@given(data=st.data())
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_windows_equal_naive_filter(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(TRACES), label="trace")
    recs = all_records(path)
    if not recs:
        return
    times = sorted(r[0] for r in recs)
    lo, hi = times[0] - 3 * NS, times[-1] + 3 * NS
    point = st.one_of(
        st.integers(lo, hi), st.sampled_from(times), st.sampled_from(times).map(lambda t: t + 1)
    )
    start, end = data.draw(point, label="start"), data.draw(point, label="end")
    ordered = all(a[0] <= b[0] for a, b in itertools.pairwise(recs))
    sources = slicer.open_sources([str(path)])
    try:
        window = slicer.resolve(sources, raw_ns(start), raw_ns(end))
        buf = io.BytesIO()
        slicer.write_slice(sources, window, buf, slicer.SliceOptions(scan_all=not ordered))
    finally:
        slicer.close_all(sources)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"bulk-slice-hyp-{os.getpid()}.pcap"
    out.write_bytes(buf.getvalue())
    try:
        assert pcap_records(out) == naive(recs, start, end)
    finally:
        out.unlink()


# -- several files -------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A 3 MB trace of real packets, and its split into ~1 MB files by tcpdump -C."""
    tcpdump = require_tool("tcpdump")
    d = tmp_path_factory.mktemp("archive")
    big = d / "big.pcap"
    build_trace(big, 12000, mean_gap_us=5000, ties=0.1)
    parts_dir = d / "parts"
    parts_dir.mkdir()
    subprocess.run(
        [tcpdump, "-Z", "root", "-r", str(big), "-w", str(parts_dir / "part"), "-C", "1"],
        check=True,
        capture_output=True,
    )
    parts = sorted(parts_dir.iterdir(), key=lambda p: (len(p.name), p.name))
    assert len(parts) >= 3
    return big, parts


def _archive_windows(big: Path) -> list[list[str]]:
    recs = pcap_records(big)
    return [*_windows(recs), [raw(recs[1500][0]), raw(recs[3600][0])]]


def test_split_archive_same_as_tcpslice_and_as_whole(
    archive: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    require_tool("tcpslice")
    big, parts = archive
    whole = pcap_records(big)
    for times in _archive_windows(big):
        ours = pcap_records(bulk_slice(tmp_path, times, parts))
        assert ours == tcpslice_records(tmp_path, times, parts), times
        assert ours == naive_slice(whole, times), times
    # Given in reverse order, the merge is the same.
    assert pcap_records(bulk_slice(tmp_path, [], parts[::-1])) == whole


def test_archive_directory(archive: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """--dir, first without a catalogue, then with one (bulk index --rebuild)."""
    big, parts = archive
    d = tmp_path / "traces"
    d.mkdir()
    for i, p in enumerate(parts):
        shutil.copy(p, d / f"bulk-eth0-{i:06d}.pcap")
    recs = pcap_records(big)
    times = [raw(recs[1000][0]), raw(recs[2000][0])]
    expected = naive(recs, recs[1000][0], recs[2000][0] + 999)
    proc = run_bulk("slice", "--stats", "-w", tmp_path / "o.pcap", *times, "--dir", d)
    assert proc.returncode == 0, proc.stderr
    assert pcap_records(tmp_path / "o.pcap") == expected
    assert b"(0 ruled out by the catalogue)" in proc.stderr
    index = run_bulk("index", "--rebuild", "--dir", d)
    assert index.returncode == 0, index.stderr
    proc = run_bulk("slice", "--stats", "-w", tmp_path / "c.pcap", *times, "--dir", d)
    assert proc.returncode == 0, proc.stderr
    assert pcap_records(tmp_path / "c.pcap") == expected
    ruled_out = int(proc.stderr.split(b"(")[1].split()[0])
    assert ruled_out == len(parts) - 1  # the window lies in the first file


def test_catalogue_time_index_is_exact_out_of_order(tmp_path: Path) -> None:
    """A capture that wrote packets slightly out of time order: with the
    catalogue's time index (min/max per segment), --dir slices it exactly."""
    src = tmp_path / "src.pcap"
    build_trace(src, 12000, mean_gap_us=3000, ties=0.0, seed=11)
    header, recs = read_pcap(src)
    for i in range(5, len(recs) - 1, 37):  # swap neighbours: time goes back
        recs[i], recs[i + 1] = recs[i + 1], recs[i]
    d = tmp_path / "traces"
    d.mkdir()
    path = d / "bulk-eth0-000000.pcap"
    path.write_bytes(
        header + b"".join(struct.pack("<IIII", s_, f, len(b), w) + b for s_, f, w, b in recs)
    )
    assert run_bulk("index", "--rebuild", "--dir", d).returncode == 0
    ns = [(s_ * NS + f * 1000, w, b) for s_, f, w, b in recs]
    for i, j in ((5, 6), (6, 5000), (4000, 9000), (42, 11000)):
        lo, hi = sorted((ns[i][0], ns[j][0]))
        out = tmp_path / "o.pcap"
        proc = run_bulk("slice", "-w", out, raw_ns(lo), raw_ns(hi), "--dir", d)
        assert proc.returncode == 0, proc.stderr
        assert pcap_records(out) == naive(ns, lo, hi), (i, j)


def test_duplicates_across_files(archive: tuple[Path, list[Path]], tmp_path: Path) -> None:
    require_tool("tcpslice")
    big, parts = archive
    whole = pcap_records(big)
    recs = whole
    times = [raw(recs[800][0]), raw(recs[2600][0])]
    expected = naive(whole, recs[800][0], recs[2600][0])
    inputs = [parts[0], big, parts[1], parts[2]]
    # Every packet is in two files: written once.
    assert pcap_records(bulk_slice(tmp_path, times, inputs)) == expected
    # Kept, the merge order equals tcpslice -D's (ties in input order).
    keep = pcap_records(bulk_slice(tmp_path, times, inputs, "--keep-duplicates"))
    assert keep == tcpslice_records(tmp_path, times, inputs, "-D")
    assert len(keep) == 2 * len(expected)


def test_editcap_split_of_a_real_trace(tmp_path: Path) -> None:
    editcap = require_tool("editcap")
    require_tool("tcpslice")
    src = DATA / "ssh-dups.pcap"
    subprocess.run(
        [editcap, "-F", "pcap", "-c", "100", str(src), str(tmp_path / "p.pcap")],
        check=True,
        capture_output=True,
    )
    parts = sorted(tmp_path.glob("p_*.pcap"))
    assert len(parts) == 4
    recs = pcap_records(src)
    for times in _windows(recs):
        ours = pcap_records(bulk_slice(tmp_path, times, parts))
        assert ours == tcpslice_records(tmp_path, times, parts), times


def test_mixed_link_types_refused(tmp_path: Path) -> None:
    proc = run_bulk(
        "slice",
        "-w",
        tmp_path / "o.pcap",
        DATA / "linux_dlt_sll2.pcap",
        DATA / "zeek-http-get.pcap",
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "LINUX_SLL2" in err and "EN10MB" in err and err.count("\n") == 1


# -- compressed copies, stdin, pcapng -----------------------------------------------------


def _compressed_copies(src: Path, d: Path) -> dict[str, Path]:
    zstd = require_tool("zstd")
    out = {}
    gz = d / (src.name + ".gz")
    gz.write_bytes(gzip.compress(src.read_bytes()))
    out["gzip"] = gz
    one = d / (src.name + ".zst")
    subprocess.run([zstd, "-q", "-f", "-3", str(src), "-o", str(one)], check=True)
    out["zstd-cli"] = one
    frames = d / (src.name + ".frames.zst")
    zstd_frames(src, frames, 64 * 1024)
    out["zstd-frames"] = frames
    table = d / (src.name + ".seekable.zst")
    zstd_frames(src, table, 100_000, seek_table=True)
    out["zstd-seekable"] = table
    for fmt in ("zstd", "gzip"):
        out[f"bulk-compress-{fmt}"] = bulk_compressed(src, d, fmt)
    return out


def bulk_compressed(src: Path, d: Path, fmt: str, frame_size: int = 64 * 1024) -> Path:
    """``bulk compress``'s format: frames on packet boundaries with a time index."""
    from bulk.compress.codec import CompressSettings, compress_file  # noqa: PLC0415

    out = d / f"{src.name}.bulk.{fmt}"
    with open(out, "wb") as f:
        compress_file(str(src), f, CompressSettings(fmt=fmt, frame_size=frame_size, threads=1))
    return out


def test_compressed_copies_give_identical_output(
    archive: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    big, _parts = archive
    copies = _compressed_copies(big, tmp_path)
    for times in _archive_windows(big):
        plain = bulk_slice(tmp_path, times, [big]).read_bytes()
        for kind, path in copies.items():
            assert bulk_slice(tmp_path, times, [path]).read_bytes() == plain, (kind, times)


def test_multiframe_zstd_is_searched_not_read(
    archive: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    big, _parts = archive
    frames = tmp_path / "big.pcap.zst"
    zstd_frames(big, frames, 64 * 1024)
    recs = pcap_records(big)
    sources = slicer.open_sources([str(frames)])
    try:
        assert sources[0].kind == "pcap+zstd"
        window = slicer.resolve(sources, raw(recs[2500][0]), "+0.1")
        buf = io.BytesIO()
        report = slicer.write_slice(sources, window, buf)
    finally:
        slicer.close_all(sources)
    assert report.bytes_read < frames.stat().st_size // 3


def test_bulk_compress_index_reads_only_the_frames_needed(
    archive: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    big, _parts = archive
    recs = pcap_records(big)
    for fmt in ("zstd", "gzip"):
        comp = bulk_compressed(big, tmp_path, fmt)
        sources = slicer.open_sources([str(comp)])
        try:
            assert sources[0].kind == f"pcap+{fmt}-index"
            window = slicer.resolve(sources, raw(recs[6000][0]), "+2")
            buf = io.BytesIO()
            report = slicer.write_slice(sources, window, buf)
        finally:
            slicer.close_all(sources)
        assert report.bytes_read < comp.stat().st_size // 4, fmt
        out = tmp_path / f"o-{fmt}.pcap"
        out.write_bytes(buf.getvalue())
        assert pcap_records(out) == naive(recs, window.start_ns, window.end_ns)


def test_bulk_compressed_open_decodes_no_frame(
    archive: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening reads the pcap header from the start of frame 0 without decoding
    the frame; a window away from the start decodes only its own frames."""
    from bulk.trace import SeekableTrace  # noqa: PLC0415

    big, _parts = archive
    recs = pcap_records(big)
    decoded: list[int] = []
    real = SeekableTrace.decompress

    def counting(st_: Any, k: int, comp: bytes) -> bytes:
        decoded.append(k)
        return real(st_, k, comp)

    real_into = SeekableTrace.decompress_into

    def counting_into(st_: Any, k: int, *args: Any) -> Any:
        decoded.append(k)
        return real_into(st_, k, *args)

    monkeypatch.setattr(SeekableTrace, "decompress", counting)
    monkeypatch.setattr(SeekableTrace, "decompress_into", counting_into)
    for fmt in ("zstd", "gzip"):
        comp = bulk_compressed(big, tmp_path, fmt)
        decoded.clear()
        opened = slicer.open_sources([str(comp)])
        try:
            assert decoded == [], fmt
            window = slicer.resolve(opened, raw(recs[6000][0]), "+2")
            buf = io.BytesIO()
            slicer.write_slice(opened, window, buf)
        finally:
            slicer.close_all(opened)
        assert decoded and 0 not in decoded, fmt
        out = tmp_path / f"o-{fmt}.pcap"
        out.write_bytes(buf.getvalue())
        assert pcap_records(out) == naive(recs, window.start_ns, window.end_ns)


def test_bulk_compressed_header_from_a_short_read_else_the_frame(
    archive: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pcap header is decoded from the start of frame 0; when that start is
    too short to hold it, the whole frame is read."""
    from bulk.slicing import sources  # noqa: PLC0415
    from bulk.trace import SeekableTrace  # noqa: PLC0415

    big, _parts = archive
    recs = pcap_records(big)
    for fmt in ("zstd", "gzip"):
        comp = bulk_compressed(big, tmp_path, fmt, frame_size=256 * 1024)
        for head_read in (sources.HEAD_READ, 8):
            monkeypatch.setattr(sources, "HEAD_READ", head_read)
            opened = slicer.open_sources([str(comp)])
            try:
                read = opened[0].bytes_read
                window = slicer.resolve(opened, raw(recs[6000][0]), "+2")
                buf = io.BytesIO()
                slicer.write_slice(opened, window, buf)
            finally:
                slicer.close_all(opened)
            with SeekableTrace.open(str(comp)) as st_:
                frame0 = st_.frames[0].comp_size
                index = comp.stat().st_size - sum(f.comp_size for f in st_.frames)
            # The start of frame 0; with 8 bytes, too short: then the whole frame.
            first = min(head_read, frame0)
            assert read == index + first + (frame0 if first < 24 else 0), (fmt, head_read)
            out = tmp_path / f"o-{fmt}.pcap"
            out.write_bytes(buf.getvalue())
            assert pcap_records(out) == naive(recs, window.start_ns, window.end_ns)


def test_bulk_compressed_unordered_pcapng_is_exact(tmp_path: Path) -> None:
    """The frame index keeps each frame's lowest and highest time: exact without --scan."""
    src = DATA / "test5-lines-randomized.pcap"
    recs = all_records(src)
    times = sorted(r[0] for r in recs)
    comp = bulk_compressed(src, tmp_path, "zstd", frame_size=256)
    args = [raw_ns(times[2]), raw_ns(times[8])]
    assert pcap_records(bulk_slice(tmp_path, args, [comp])) == naive(recs, times[2], times[8])


def test_real_traces_compressed(tmp_path: Path) -> None:
    for name in ("ssh-dups.pcap", "tcp-handshake-nano.pcap", "pptp.pcap"):
        src = DATA / name
        recs = pcap_records(src)
        times = [raw_ns(recs[len(recs) // 3][0]), raw_ns(recs[-1][0])]
        plain = bulk_slice(tmp_path, times, [src]).read_bytes()
        for kind, path in _compressed_copies(src, tmp_path).items():
            assert bulk_slice(tmp_path, times, [path]).read_bytes() == plain, (name, kind)


def test_stdin(tmp_path: Path) -> None:
    src = DATA / "ssh-dups.pcap"
    recs = pcap_records(src)
    times = [raw(recs[50][0]), raw(recs[200][0])]
    proc = run_bulk("slice", *times, "-", input=src.read_bytes())
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "o.pcap").write_bytes(proc.stdout)
    assert pcap_records(tmp_path / "o.pcap") == naive(recs, recs[50][0], recs[200][0])


def test_pcapng_input(tmp_path: Path) -> None:
    """tcpslice refuses pcapng; bulk slices it into pcap of the same link type."""
    src = DATA / "irc-dcc-send.pcapng"
    if shutil.which("tcpslice"):
        assert tcpslice(tmp_path, [], [src]) is None
    recs = all_records(src)
    times = [raw_ns(recs[100][0]), raw_ns(recs[900][0])]
    out = bulk_slice(tmp_path, times, [src])
    assert pcap_records(out) == naive(recs, recs[100][0], recs[900][0])


def test_unordered_file_warns_and_scan_is_exact(tmp_path: Path) -> None:
    src = DATA / "test5-lines-randomized.pcap"  # pcapng, shuffled
    recs = all_records(src)
    times = sorted(r[0] for r in recs)
    # Up to the last packet: nothing stops the read early; out-of-order packets
    # inside the window are written (in file order) and the file is named.
    args = [raw_ns(times[2]), raw_ns(times[-1])]
    proc = run_bulk("slice", "-w", tmp_path / "a.pcap", *args, src)
    assert proc.returncode == 0
    assert b"not in time order" in proc.stderr
    assert pcap_records(tmp_path / "a.pcap") == naive(recs, times[2], times[-1])
    # A window that ends early: the read stops at the first later packet, so
    # only part of the window may come out; --scan reads everything.
    args = [raw_ns(times[2]), raw_ns(times[8])]
    expected = naive(recs, times[2], times[8])
    early = pcap_records(bulk_slice(tmp_path, args, [src]))
    assert all(r in expected for r in early)
    assert pcap_records(bulk_slice(tmp_path, args, [src], "--scan")) == expected


# -- command line ----------------------------------------------------------------------------


def test_list_like_tcpslice_r(tmp_path: Path) -> None:
    require_tool("tcpslice")
    files = [str(p) for p in USABLE if _tcpslice_usable(p)][:8]
    env = dict(os.environ, TZ="America/Los_Angeles")
    for ours_flags, theirs_flag in (
        ([], "-r"),
        (["--time-format", "raw"], "-R"),
        (["--time-format", "parseable"], "-t"),
    ):
        ours = subprocess.run(
            [*BULK, "slice", "--list", *ours_flags, *files],
            capture_output=True,
            check=True,
            env=env,
        )
        theirs = subprocess.run(
            ["tcpslice", theirs_flag, *files], capture_output=True, check=True, env=env
        )
        assert ours.stdout == theirs.stdout, theirs_flag


def test_show_window_like_tcpslice_d() -> None:
    require_tool("tcpslice")
    src = DATA / "zeek-http-get.pcap"
    for times in (["22h", "+1h10m"], ["+0.1", "+0.05"], ["1362692527"]):
        ours = subprocess.run(
            [*map(str, _bulk()), "slice", "--show-window", *times, str(src)],
            capture_output=True,
            check=True,
            env=dict(os.environ, TZ="UTC"),
        )
        theirs = subprocess.run(
            ["tcpslice", "-d", *times, str(src)],
            capture_output=True,
            check=True,
            env=dict(os.environ, TZ="UTC"),
        )
        assert ours.stdout == theirs.stdout


def _bulk() -> list[str]:
    return BULK


def test_refuses_a_terminal() -> None:
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [*_bulk(), "slice", str(DATA / "zeek-http-get.pcap")],
            stdout=slave,
            stderr=subprocess.PIPE,
            check=False,
            timeout=60,
        )
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 2
    assert b"terminal" in proc.stderr


def test_refuses_to_overwrite_an_input(tmp_path: Path) -> None:
    src = tmp_path / "x.pcap"
    shutil.copy(DATA / "zeek-http-get.pcap", src)
    proc = run_bulk("slice", "-w", src, src)
    assert proc.returncode == 2
    assert src.read_bytes() == (DATA / "zeek-http-get.pcap").read_bytes()


def test_bad_time_names_the_part(tmp_path: Path) -> None:
    proc = run_bulk("slice", "-w", tmp_path / "o.pcap", "13x15m", DATA / "zeek-http-get.pcap")
    # "13x15m" does not look like a time: it is taken for a file, which does not exist.
    assert proc.returncode == 2
    proc = run_bulk("slice", "-w", tmp_path / "o.pcap", "25h70m80s", DATA / "zeek-http-get.pcap")
    assert proc.returncode == 2
    assert b"hour 25" in proc.stderr


def test_composes_with_tcpdump(archive: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """The classic recipe: slice | tcpdump -r - -w good.pcap 'filter'."""
    tcpdump = require_tool("tcpdump")
    require_tool("tcpslice")
    big, _parts = archive
    recs = pcap_records(big)
    times = [raw(recs[1000][0]), "+5"]
    outs = []
    for cmd in ([*_bulk(), "slice", *times, str(big)], ["tcpslice", *times, str(big)]):
        good = tmp_path / f"good{len(outs)}.pcap"
        producer = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        subprocess.run(
            [tcpdump, "-r", "-", "-w", str(good), "tcp"],
            stdin=producer.stdout,
            check=True,
            capture_output=True,
        )
        assert producer.stdout is not None
        producer.stdout.close()
        assert producer.wait() == 0
        outs.append(pcap_records(good))
    assert outs[0] == outs[1] and outs[0]


def test_stream_source_defers_truncation(tmp_path: Path) -> None:
    """A gzip trace cut short: whole packets in the window are written, then exit 3."""
    src = DATA / "ssh-dups.pcap"
    data = gzip.compress(src.read_bytes())
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    s = StreamSource(str(cut))
    assert s.first_ns is not None
    proc = run_bulk("slice", "-w", tmp_path / "o.pcap", cut)
    assert proc.returncode == 3
    got = pcap_records(tmp_path / "o.pcap")
    assert got and got == pcap_records(src)[: len(got)]
