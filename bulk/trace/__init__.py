"""The one trace I/O layer: every command reads and writes traces through here.

The names below are loaded on first use (PEP 562), so that importing one
submodule (``bulk.trace.packet``, say) does not import them all: the seekable
compressed-trace machinery alone pulls in threads, dataclasses and zstd
framing, which most commands never touch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bulk.trace.bpf import BpfFilter, compile_bpf
    from bulk.trace.packet import LINKTYPE_NAMES, Packet, linktype_name
    from bulk.trace.reader import TraceReader, open_trace
    from bulk.trace.seekable import Frame, SeekableTrace, is_seekable
    from bulk.trace.source import iter_packets
    from bulk.trace.writer import PcapWriter, pcap_header, record_header

_WHERE = {
    "BpfFilter": "bulk.trace.bpf",
    "compile_bpf": "bulk.trace.bpf",
    "LINKTYPE_NAMES": "bulk.trace.packet",
    "Packet": "bulk.trace.packet",
    "linktype_name": "bulk.trace.packet",
    "TraceReader": "bulk.trace.reader",
    "open_trace": "bulk.trace.reader",
    "Frame": "bulk.trace.seekable",
    "SeekableTrace": "bulk.trace.seekable",
    "is_seekable": "bulk.trace.seekable",
    "iter_packets": "bulk.trace.source",
    "PcapWriter": "bulk.trace.writer",
    "pcap_header": "bulk.trace.writer",
    "record_header": "bulk.trace.writer",
}

__all__ = [
    "LINKTYPE_NAMES",
    "BpfFilter",
    "Frame",
    "Packet",
    "PcapWriter",
    "SeekableTrace",
    "TraceReader",
    "compile_bpf",
    "is_seekable",
    "iter_packets",
    "linktype_name",
    "open_trace",
    "pcap_header",
    "record_header",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bulk.trace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
