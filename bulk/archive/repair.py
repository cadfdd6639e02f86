"""Repair a trace left open by a crash (kill -9, power loss) and finalise it.

A capture killed while writing leaves ``X.pcap.open`` ending anywhere: in a
record header, in packet bytes, even inside the file header, and after a power
loss possibly with a zero-filled tail. The repair keeps every whole record,
cuts the rest, writes a file header if the file has none, then finalises the
file as ``X.pcap`` (fsync, link, unlink), so tcpdump reads it without error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bulk.archive.listing import OPEN_SUFFIX
from bulk.archive.naming import finalise
from bulk.archive.scan import PCAP_HEADER, TraceScan, scan_trace
from bulk.errors import ArchiveError
from bulk.trace import pcap_header


@dataclass(frozen=True)
class Repaired:
    """What the repair of one file did."""

    open_path: str
    final_path: str
    scan: TraceScan
    cut_bytes: int  # bytes removed from the end
    wrote_header: bool  # the file had no complete pcap header

    def describe(self) -> str:
        what = [f"{self.scan.packets} packets kept"]
        if self.cut_bytes:
            what.append(f"{self.cut_bytes} bytes of a cut record removed")
        if self.scan.zero_tail:
            what.append("zero-filled tail removed")
        if self.wrote_header:
            what.append("file header written")
        return f"repaired {os.path.basename(self.final_path)}: " + ", ".join(what)


def repair_open_file(open_path: str, linktype: int, snaplen: int) -> Repaired:
    """Cut ``open_path`` to its last whole record and finalise it.

    ``linktype`` and ``snaplen`` are used only when the file header itself is
    missing, cut or zero-filled (the capture's own values). A file that is not a pcap at
    all raises TraceError and is left untouched.
    """
    if not open_path.endswith(OPEN_SUFFIX):
        raise ArchiveError(f"{open_path}: not an open trace (no {OPEN_SUFFIX} suffix)")
    final_path = open_path[: -len(OPEN_SUFFIX)]
    if not os.path.exists(open_path) and os.path.exists(final_path):
        # Finalised meanwhile (by the archiver of the capture that crashed).
        return Repaired(open_path, final_path, scan_trace(final_path), 0, False)
    if os.path.exists(final_path) and os.path.samefile(open_path, final_path):
        # A crash between link and unlink: the file was already whole and final.
        os.unlink(open_path)
        return Repaired(open_path, final_path, scan_trace(final_path), 0, False)
    size = os.path.getsize(open_path)
    wrote_header = False
    with open(open_path, "rb") as f:
        head = f.read(PCAP_HEADER)
    # Cut inside the file header, or a header a power loss left zero-filled
    # (the file's length reached the disk, its first block did not).
    if size < PCAP_HEADER or not any(head):
        with open(open_path, "r+b") as f:
            if size < PCAP_HEADER:
                f.truncate(0)
            f.write(pcap_header(linktype, snaplen))
            f.flush()
            os.fsync(f.fileno())
        wrote_header = True
        size = max(size, PCAP_HEADER)
    scan = scan_trace(open_path, stop_at_zero=True)
    if scan.format != "pcap" or scan.compression:
        raise ArchiveError(f"{open_path}: not an uncompressed pcap; left as it is")
    cut = size - scan.end_offset
    if cut > 0:
        os.truncate(open_path, scan.end_offset)
    final = finalise(open_path)
    return Repaired(open_path, final, scan, cut, wrote_header)
