"""Input mistakes of the reading commands: one line on stderr, exit 2, and the
same words from slice and extract (they share bulk.commands.inputs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bulk.commands.inputs import gather_inputs
from bulk.errors import EXIT_BAD_INPUT
from tests.conftest import DATA, run_bulk

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
