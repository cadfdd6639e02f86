"""Every reader and analyzer, through the library, over mutated real traces.

Each target gets a trace mutated by hypothesis (byte flips, truncations,
corrupted length fields, splices of other traces) and must either give a
result or raise the documented error (TraceError, TruncatedTrace, or the
command's UsageError) within a deadline: never another exception, never a
hang. Where an independent reader exists it judges the result (tcpdump reads
every repaired file). Short form ~300 examples per target; BULK_LONG=1 for
the long form.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulk.errors import BulkError, FilterError, TraceError
from tests.faults.harness import deadline, examples
from tests.faults.mutate import (
    Base,
    Pool,
    bases,
    compressed_bases,
    fresh,
    mutations,
    pick,
    write_case,
)

DEADLINE_S = 10.0
FUZZ = settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
    derandomize=False,
)


@pytest.fixture(scope="module")
def zbases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Base, ...]:
    return Pool(compressed_bases(tmp_path_factory.mktemp("zbases")))


def case(data: st.DataObject, work: Path, pool: tuple[Base, ...]) -> Path:
    base = pick(data, pool)
    mutated = data.draw(mutations(base), label="mutated")
    return write_case(fresh(work), base, mutated)


def _read_all(path: Path) -> int:
    from bulk.trace import open_trace  # noqa: PLC0415

    n = 0
    with open_trace(str(path)) as r:
        for pkt in r:
            assert 0 <= len(pkt.data) <= 16 << 20
            assert isinstance(pkt.ts_ns, int) and isinstance(pkt.wirelen, int)
            n += 1
    return n


# -- trace layer ---------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_open_trace_reads_or_raises_trace_error(work: Path, data: st.DataObject) -> None:
    path = case(data, work, bases())
    with deadline(DEADLINE_S):
        try:
            _read_all(path)
        except TraceError:
            pass


@FUZZ
@given(data=st.data())
def test_compressed_readers(work: Path, zbases: tuple[Base, ...], data: st.DataObject) -> None:
    """Seekable zstd / gzip: the streaming reader, the frame index, every frame."""
    from bulk.trace import SeekableTrace, is_seekable  # noqa: PLC0415

    path = case(data, work, zbases)
    with deadline(DEADLINE_S):
        try:
            _read_all(path)
        except TraceError:
            pass
        try:
            if is_seekable(str(path)):
                with SeekableTrace.open(str(path)) as trace:
                    n = len(trace.frames)
                    for i in trace.frames_between(None, None):
                        assert 0 <= i < n
                    for _pkt in trace.packets_in(0, n):
                        pass
                    if n > 1:
                        for _pkt in trace.packets_in(n // 2, n):
                            pass
        except TraceError:
            pass


@FUZZ
@given(data=st.data())
def test_iter_packets_merge_window_bpf(work: Path, data: st.DataObject) -> None:
    """Two inputs merged (one mutated, one intact), a window and a BPF filter."""
    from bulk.trace import iter_packets  # noqa: PLC0415

    path = case(data, work, bases())
    other = str(Path(__file__).parents[1] / "data" / "zeek-http-get.pcap")
    start = data.draw(st.none() | st.integers(0, 2**62), label="start")
    bpf = data.draw(st.sampled_from([None, "tcp", "udp or vlan", "host 10.0.0.1 or ip6"]))
    with deadline(DEADLINE_S):
        try:
            for _pkt in iter_packets([str(path), other], start_ns=start, bpf=bpf):
                pass
        except FilterError:
            # A mutated link type the expression cannot compile for (VLAN on SLL).
            pass
        except TraceError:
            pass


# -- archive: scan, repair, catalogue rebuild, host index -----------------------


@FUZZ
@given(data=st.data())
def test_scan_trace(work: Path, data: st.DataObject) -> None:
    from bulk.archive.scan import scan_trace  # noqa: PLC0415

    path = case(data, work, bases())
    with deadline(DEADLINE_S):
        try:
            scan = scan_trace(str(path))
        except TraceError:
            return
    assert scan.packets >= 0
    if scan.compression is None:
        assert scan.end_offset <= path.stat().st_size


def _whole_records(data: bytes) -> int:
    """Bytes of ``data`` up to the end of its last whole pcap record (LE, microseconds)."""
    off = 24
    while off + 16 <= len(data):
        caplen = int.from_bytes(data[off + 8 : off + 12], "little")
        if off + 16 + caplen > len(data):
            break
        off += 16 + caplen
    return off if len(data) >= 24 else 0


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_repair_leaves_a_file_tcpdump_reads(work: Path, data: st.DataObject) -> None:
    """What a crash leaves of a file bulk capture was writing: any prefix (even
    inside the file header), then nothing, zeros (a power loss) or stale bytes of
    other files. Repaired and finalised, tcpdump reads it without error and every
    whole record written before the crash is still there."""
    from bulk.archive.repair import repair_open_file  # noqa: PLC0415

    pcaps = tuple(b for b in bases() if b.suffix == ".pcap" and b.data[:4] == b"\xd4\xc3\xb2\xa1")
    base = pick(data, pcaps)
    cut = data.draw(st.integers(0, len(base.data)), label="cut")
    prefix = base.data[:cut]
    tail = data.draw(
        st.one_of(
            st.just(b""),
            st.integers(1, 8192).map(bytes),
            st.binary(min_size=1, max_size=512),
            st.tuples(st.integers(0, len(bases()) - 1), st.integers(0, 1 << 16)).map(
                lambda ka: bases()[ka[0]].data[ka[1] : ka[1] + 4096]
            ),
        ),
        label="tail",
    )
    d = fresh(work)
    open_path = d / "bulk-20260101T000000Z-eth0-000001.pcap.open"
    open_path.write_bytes(prefix + tail)
    # A crash loses whole blocks: the header (written with the first records)
    # is on disk whole, or cut with the file, or its whole block reads as zeros.
    realistic = cut >= 24 or not tail or (cut == 0 and not any(tail))
    with deadline(DEADLINE_S):
        try:
            done = repair_open_file(str(open_path), 1, 262144)
        except BulkError:
            if realistic:
                raise
            assert open_path.read_bytes() == prefix + tail  # refused: left as it was
            return
    final = Path(done.final_path)
    assert not open_path.exists() and final.exists()
    kept = final.read_bytes()
    whole = _whole_records(prefix)
    if done.wrote_header:
        assert kept[:4] == b"\xd4\xc3\xb2\xa1" and kept[20:24] == b"\x01\0\0\0"
    if cut >= 24:
        assert kept.startswith(prefix[:whole])  # nothing written before the crash is lost
    if not realistic:
        return  # a header that no crash can produce (garbage in its first bytes): kept as is
    if cut < 24:
        assert done.wrote_header
    proc = subprocess.run(
        ["tcpdump", "-r", str(final), "-nn", "-q"], capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_catalogue_rebuild(work: Path, zbases: tuple[Base, ...], data: st.DataObject) -> None:
    """A lost catalogue rebuilt over an archive holding a damaged file: a report
    naming it, never an exception."""
    from bulk.archive.catalogue import Catalogue  # noqa: PLC0415

    base = pick(data, bases() + zbases)
    mutated = data.draw(mutations(base))
    d = fresh(work)
    ext = base.suffix if base.suffix != ".pcapng" else ".pcap"
    (d / f"bulk-20260101T000000Z-eth0-000001{ext}").write_bytes(mutated)
    shutil.copy(
        Path(__file__).parents[1] / "data" / "zeek-smtp.pcap",
        d / "bulk-20260101T000100Z-eth0-000002.pcap",
    )
    with deadline(DEADLINE_S), Catalogue.open(str(d)) as cat:
        report = cat.rebuild()
        names = {r.name for r in cat.files()}
    assert "bulk-20260101T000100Z-eth0-000002.pcap" in names
    assert report.files + len([e for e in report.errors if "indexed up to" not in e]) == 2


@FUZZ
@given(data=st.data())
def test_host_index_build(work: Path, data: st.DataObject) -> None:
    from bulk.archive.hostindex import HostIndex, build_index  # noqa: PLC0415

    path = case(data, work, bases())
    with deadline(DEADLINE_S):
        try:
            index = build_index(str(path))
        except TraceError:
            return
    assert isinstance(index, HostIndex)


@FUZZ
@given(blob=st.binary(max_size=600), prefix=st.booleans())
def test_host_index_file_decoding(work: Path, blob: bytes, prefix: bool) -> None:
    """A damaged side file X.pcap.idx is ignored (extract then reads the trace),
    never trusted and never a crash."""
    from bulk.archive.hostindex import load_index_for  # noqa: PLC0415

    d = fresh(work)
    trace = d / "t.pcap"
    shutil.copy(Path(__file__).parents[1] / "data" / "zeek-http-get.pcap", trace)
    (d / "t.pcap.idx").write_bytes((b"BULKHIX1" if prefix else b"") + blob)
    with deadline(DEADLINE_S):
        try:
            load_index_for(str(trace))
        except TraceError:
            pass


# -- analyzers -----------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_summary(work: Path, zbases: tuple[Base, ...], data: st.DataObject) -> None:
    from bulk.summary import summarize  # noqa: PLC0415

    path = case(data, work, bases() + zbases)
    with deadline(DEADLINE_S):
        try:
            s = summarize(str(path))
        except TraceError:
            return
    assert s.packets >= 0


@FUZZ
@given(data=st.data())
def test_flow_table_with_contents(work: Path, data: st.DataObject) -> None:
    """Reassembly into contents files: TraceError or files, all inside OUTDIR."""
    from bulk.analyzers.contents import ContentsAnalyzer  # noqa: PLC0415
    from bulk.decode import PROTO_TCP  # noqa: PLC0415
    from bulk.flow.table import FlowConfig, FlowTable  # noqa: PLC0415

    path = case(data, work, bases())
    out = work / "out"
    out.mkdir()
    analyzer = ContentsAnalyzer(str(out), max_open_files=4)
    table = FlowTable([analyzer], FlowConfig(max_flows=64, protocols=frozenset((PROTO_TCP,))))
    with deadline(DEADLINE_S):
        try:
            table.run_traces([str(path)], None, None, None)
        except TraceError:
            table.finish()
        finally:
            analyzer.close()
    for entry in os.scandir(out):
        assert entry.is_file(follow_symlinks=False)
        assert entry.name.startswith("contents.")


@FUZZ
@given(data=st.data(), fast=st.booleans())
def test_backdoor(work: Path, data: st.DataObject, fast: bool) -> None:
    from bulk.analyzers import backdoor_run  # noqa: PLC0415
    from bulk.analyzers.backdoor import BackdoorConfig  # noqa: PLC0415
    from bulk.analyzers.standard_ports import StandardPorts  # noqa: PLC0415

    path = case(data, work, bases())
    cfg = BackdoorConfig(standard=StandardPorts.load(None, ()), report_standard=True)
    found: list[object] = []
    with deadline(DEADLINE_S):
        try:
            backdoor_run.run([str(path)], cfg, found.append, fast=fast)
        except TraceError:
            pass
    for f in found:
        f.to_json()  # type: ignore[attr-defined]


@FUZZ
@given(data=st.data())
def test_slice_library(work: Path, zbases: tuple[Base, ...], data: st.DataObject) -> None:
    from bulk.slicing import slicer  # noqa: PLC0415
    from bulk.timespec import TimeWindow  # noqa: PLC0415

    path = case(data, work, bases() + zbases)
    lo = data.draw(st.none() | st.integers(0, 2**62))
    hi = data.draw(st.none() | st.integers(0, 2**62))
    out = io.BytesIO()
    with deadline(DEADLINE_S):
        try:
            sources = slicer.open_sources([str(path)])
        except BulkError:
            return
        try:
            slicer.write_slice(sources, TimeWindow(lo, hi), out)
        except BulkError:
            pass
        finally:
            slicer.close_all(sources)
