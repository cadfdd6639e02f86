"""Run the flow table with the contents and backdoor analyzers over one trace, in a
process of its own, and report its peak RSS (``python -m tests.faults.rss_probe``).

Prints one JSON line: peak RSS (KiB), packets, files written, stream bytes written.
"""

from __future__ import annotations

import json
import os
import sys

from bulk.analyzers.backdoor import BackdoorAnalyzer, BackdoorConfig
from bulk.analyzers.contents import SUMMARY_NAME, ContentsAnalyzer
from bulk.analyzers.standard_ports import StandardPorts
from bulk.errors import TraceError
from bulk.flow.table import FlowConfig, FlowTable

# Bounds chosen small so that an unbounded structure shows: the table may keep
# at most 1,000 flows and 8 MiB of out-of-order data in all.
CONFIG = FlowConfig(
    max_flows=1000,
    max_pending_bytes=1 << 20,
    reassembly_budget_bytes=8 << 20,
)


def main(trace: str, outdir: str) -> None:
    contents = ContentsAnalyzer(outdir, max_open_files=16)
    found: list[object] = []
    backdoor = BackdoorAnalyzer(BackdoorConfig(standard=StandardPorts.load(None, ())), found.append)
    table = FlowTable([contents, backdoor], CONFIG)
    try:
        table.run_traces([trace])
    except TraceError:
        pass
    finally:
        table.finish()
        contents.close()
    written = sum(
        e.stat().st_size
        for e in os.scandir(outdir)
        if e.is_file() and e.name != SUMMARY_NAME  # stream data only
    )
    peak = _peak_rss_kib()
    print(json.dumps({"rss_kib": peak, "packets": table.stats.packets,
                      "files": contents.files, "bytes": written}))  # fmt: skip


def _peak_rss_kib() -> int:
    """VmHWM: the peak RSS of this program. (getrusage's ru_maxrss survives exec and
    would report the size of the process that forked this one, pytest's.)"""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
