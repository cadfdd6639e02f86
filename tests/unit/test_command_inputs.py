"""The inputs of the reading commands (bulk.commands.inputs, shared): mistakes
give one line on stderr, exit 2, and the same words from every command; the
reference of relative times against tcpdump."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bulk.commands.inputs import first_packet_ns, gather_inputs, packet_window
from bulk.errors import EXIT_BAD_INPUT
from bulk.trace.source import open_direct
from tests.conftest import DATA, TRACES, require_tool, run_bulk

TRACE = str(DATA / "dns_udp.pcap")


def _argv(command: str, files: list[str], dirs: list[str], out: Path) -> list[str]:
    given = [a for f in files for a in ("-r", f)] if command == "extract" else files
    return [command, "-w", str(out), *given, *(a for d in dirs for a in ("--dir", d))]


@pytest.mark.parametrize(
    ("mistake", "files", "dirs", "says"),
    [
        ("none", [], [], "no input: give "),
        ("stdin twice", ["-", "-"], [], "standard input can be given only once"),
        ("a directory as a file", ["{d}"], [], "{d} is a directory: use --dir {d}"),
        ("an empty archive", [], ["{d}"], "no trace files in {d}"),
    ],
)
def test_slice_and_extract_refuse_the_same_way(
    tmp_path: Path, mistake: str, files: list[str], dirs: list[str], says: str
) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    lines = {}
    for command in ("slice", "extract"):
        argv = _argv(
            command,
            [f.format(d=d) for f in files],
            [x.format(d=d) for x in dirs],
            tmp_path / f"{command}.pcap",
        )
        proc = run_bulk(*argv, input=b"")
        assert proc.returncode == EXIT_BAD_INPUT, (mistake, proc.stderr)
        (line,) = proc.stderr.decode().splitlines()
        assert says.format(d=d) in line
        lines[command] = line.split(": ", 1)[1]  # without the command's name
        assert not (tmp_path / f"{command}.pcap").exists()
    if mistake != "none":  # how to give an input differs: -r FILE or positional files
        assert lines["slice"] == lines["extract"]


def test_listed_are_the_directory_traces_only(tmp_path: Path) -> None:
    d = tmp_path / "archive"
    d.mkdir()
    name = "bulk-20260101T000000Z-eth0-000001.pcap"
    shutil.copy(TRACE, d / name)
    paths, listed = gather_inputs([TRACE], [str(d)], include_open=False, how="")
    assert paths == [TRACE, str(d / name)]
    assert listed == {str(d / name)}


def _tcpdump_first_ns(path: Path) -> int | None:
    proc = subprocess.run(
        [require_tool("tcpdump"), "--nano", "-tt", "-n", "-c", "1", "-r", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if not proc.stdout:
        return None
    sec, frac = proc.stdout.split()[0].split(".")
    return int(sec) * 10**9 + int(frac)


def test_the_reference_is_the_earliest_first_packet_as_tcpdump_reads_it() -> None:
    firsts = {p: _tcpdump_first_ns(p) for p in TRACES}
    expected = min(t for t in firsts.values() if t is not None)
    assert first_packet_ns([str(p) for p in TRACES], open_direct) == expected
    for p, t in firsts.items():
        assert first_packet_ns([str(p)], open_direct) == t, p
    assert packet_window(None, None, ["-"], open_direct) == (None, None)  # stdin is fine then


def test_backdoor_and_contents_refuse_a_relative_time_on_stdin(tmp_path: Path) -> None:
    trace = (DATA / "dns_udp.pcap").read_bytes()
    lines = []
    for argv in (["backdoor", "-r", "-"], ["contents", "-r", "-", "-o", str(tmp_path / "c")]):
        proc = run_bulk(*argv, "--start", "+1", input=trace)
        assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
        (line,) = proc.stderr.decode().splitlines()
        lines.append(line.split(": ", 1)[1])
    assert lines[0] == lines[1] and "needs file inputs" in lines[0]
