"""The one trace I/O layer: every command reads and writes traces through here."""

from __future__ import annotations

from bulk.trace.bpf import BpfFilter, compile_bpf
from bulk.trace.packet import LINKTYPE_NAMES, Packet, linktype_name
from bulk.trace.reader import TraceReader, open_trace
from bulk.trace.seekable import Frame, SeekableTrace, is_seekable
from bulk.trace.source import iter_packets
from bulk.trace.writer import PcapWriter, pcap_header, record_header

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
