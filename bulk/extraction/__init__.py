"""BPF extraction over traces and the archive (``bulk extract``).

- :mod:`bulk.extraction.plan`: describe the inputs (from their host index when
  valid), skip those that cannot match, fix the output header.
- :mod:`bulk.extraction.sources`: the matching packets of one trace, filtered
  by libpcap in C (directly, or fed through a pipe by a child process).
- :mod:`bulk.extraction.run`: merge in time order and write pcap.
- :mod:`bulk.extraction.progress`: the progress line on a terminal.
"""

from __future__ import annotations

from bulk.extraction.plan import Input, Plan, describe, make_plan
from bulk.extraction.run import ExtractReport, write_plan

__all__ = ["ExtractReport", "Input", "Plan", "describe", "make_plan", "write_plan"]
