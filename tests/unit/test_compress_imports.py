"""`bulk compress` loads only what its normal path needs.

Start-up counts against bulk compress in its benchmark against zstd
(bench/compress.py): modules needed only by other commands, a config file,
``--json``, a catalogue or a catalogue scan must not be imported by a run that
compresses a trace. The modules a run leaves in ``sys.modules`` are the
evidence; no timing here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bulk.config import DEFAULT_CONFIG
from bulk.trace.zstdframe import engine
from tests.modules_probe import loaded_modules

DATA = Path(__file__).resolve().parents[1] / "data"

# Loaded only with a config file, for --json, to scan a trace, or by other commands.
UNNEEDED = (
    "json",
    "bulk.archive.scan",  # the catalogue's trace scan (bulk index, bulk capture)
    "pcapy",
    "gzip",  # reading gzip traces; --format gzip writes with zlib
    "base64",  # the frame index of gzip traces
    "calendar",  # archive names are parsed by retention only
    "sqlite3",  # only to open a catalogue, and these archives have none
    "datetime",  # imported by sqlite3 and calendar
    "bulk.commands.slice",
    "bulk.commands.extract",
    "bulk.commands.info",
)


def _loaded(*argv: str) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "BULK_CONFIG"}
    return loaded_modules(*argv, env=env)


@pytest.mark.parametrize("with_trace", [False, True])
def test_compress_imports_nothing_it_does_not_use(tmp_path: Path, with_trace: bool) -> None:
    if with_trace:
        shutil.copy(DATA / "dns_udp.pcap", tmp_path / "dns_udp.pcap")
    status, modules = _loaded("compress", "--dir", str(tmp_path))
    assert status == 0
    assert (tmp_path / "dns_udp.pcap.zst").exists() == with_trace
    unneeded = [*UNNEEDED]
    if not os.path.exists(DEFAULT_CONFIG):
        unneeded.append("tomllib")
    if engine().startswith("system libzstd"):
        unneeded.append("zstandard")  # the fallback compressor, and its error class
    loaded = [m for m in modules if any(m == u or m.startswith(u + ".") for u in unneeded)]
    assert loaded == []
