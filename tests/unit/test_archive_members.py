"""bulk.archive.members: an archive's readers follow traces that moved since listed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bulk.archive.members import Members, follow
from bulk.errors import TraceError, Vanished
from bulk.trace import open_trace
from tests.conftest import DATA, require_tool, tcpdump_count

NAME = "bulk-20260101T000000Z-eth0-000001.pcap"


def test_an_open_file_finalised_then_compressed_is_followed(tmp_path: Path) -> None:
    listed = tmp_path / (NAME + ".open")
    src = DATA / "zeek-http-get.pcap"
    subprocess.run(  # rotated (X.pcap.open -> X.pcap), then compressed (-> X.pcap.zst)
        [require_tool("zstd"), "-q", str(src), "-o", str(tmp_path / (NAME + ".zst"))], check=True
    )
    reader, where = follow(str(listed), open_trace)
    with reader:
        assert where == str(tmp_path / (NAME + ".zst"))
        assert sum(1 for _ in reader) == tcpdump_count(src)


def test_a_deleted_trace_is_one_warning_however_often_opened(tmp_path: Path) -> None:
    gone = str(tmp_path / NAME)
    warnings: list[str] = []
    members = Members([gone], warnings.append)
    for _ in range(3):
        with pytest.raises(Vanished):
            members.open(gone, open_trace)
    assert warnings == [f"{gone}: deleted since listed; skipped"]


def test_a_trace_named_by_the_user_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / (NAME + ".zst")).write_bytes(b"")
    warnings: list[str] = []
    with pytest.raises(TraceError) as err:
        Members([], warnings.append).open(str(tmp_path / NAME), open_trace)
    assert not isinstance(err.value, Vanished) and warnings == []


def test_a_damaged_trace_still_there_is_its_own_error(tmp_path: Path) -> None:
    bad = tmp_path / NAME
    bad.write_bytes(b"not a trace at all")
    with pytest.raises(TraceError) as err:
        Members([str(bad)], print).open(str(bad), open_trace)
    assert not isinstance(err.value, Vanished)


def test_later_opens_start_where_the_trace_was_found(tmp_path: Path) -> None:
    listed = tmp_path / (NAME + ".open")
    shutil.copy(DATA / "zeek-http-get.pcap", tmp_path / NAME)  # rotated
    members = Members([str(listed)], print)
    seen: list[str] = []

    def opener(path: str) -> str:
        seen.append(path)
        if not Path(path).exists():
            raise FileNotFoundError(path)
        return path

    assert members.open(str(listed), opener) == str(tmp_path / NAME)
    assert members.open(str(listed), opener) == str(tmp_path / NAME)
    assert seen == [str(listed), str(tmp_path / NAME), str(tmp_path / NAME)]
