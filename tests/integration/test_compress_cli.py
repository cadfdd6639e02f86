"""`bulk compress` as an operator meets it: what it picks, what it leaves, its errors."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import DATA, run_bulk

pytestmark = pytest.mark.integration


def test_picks_closed_traces_old_enough_and_leaves_the_rest(tmp_path: Path) -> None:
    d = tmp_path / "archive"
    d.mkdir()
    now = time.time()
    for name, age in [("old.pcap", 7200), ("new.pcap", 60), ("ng.pcapng", 7200)]:
        src = DATA / ("zeek-smtp.pcap" if name.endswith(".pcap") else "irc-dcc-send.pcapng")
        shutil.copy(src, d / name)
        os.utime(d / name, (now - age, now - age))
    shutil.copy(DATA / "zeek-http-get.pcap", d / "live.pcap.open")
    (d / "notes.pcap").write_bytes(b"not a trace at all, just text\n" * 10)
    os.utime(d / "notes.pcap", (now - 7200, now - 7200))
    open_before = (d / "live.pcap.open").read_bytes()

    proc = run_bulk("compress", "--dir", d, "--older-than", "1h", "--format", "gzip")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    names = sorted(p.name for p in d.iterdir() if p.name != ".bulk")
    assert names == ["live.pcap.open", "new.pcap", "ng.pcapng.gz", "notes.pcap", "old.pcap.gz"]
    assert (d / "live.pcap.open").read_bytes() == open_before
    assert "skipped" in out and "notes.pcap" in out
    # The bare number is seconds: --older-than 0 takes every closed trace.
    proc = run_bulk("compress", "--dir", d, "--older-than", "0")
    assert proc.returncode == 0, proc.stderr.decode()
    assert (d / "new.pcap.zst").exists() and (d / "old.pcap.gz").exists()
    assert (d / "notes.pcap").exists() and (d / "live.pcap.open").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-disk", "150%"], "at most 100"),
        (["--max-disk", "lots"], "disk budget"),
        (["--older-than", "2 fortnights"], "duration"),
        (["--level", "30"], "zstd level"),
        (["--format", "gzip", "--level", "0"], "gzip level"),
        (["--keep-days", "-1"], "keep-days"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    proc = run_bulk("compress", "--dir", tmp_path, *args)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_missing_directory(tmp_path: Path) -> None:
    proc = run_bulk("compress", "--dir", tmp_path / "nope")
    assert proc.returncode == 2
    assert "not a directory" in proc.stderr.decode()
