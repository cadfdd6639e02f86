"""Two faults the capture rides through without a person.

A full trace filesystem. libpcap's dumper writes through stdio and never
reports a failed write: on a full disk records are cut or lost in silence and
the file is left unreadable (tcpdump: "truncated dump file"). So before every
dispatch the capture checks the free space; below a reserve (room for the
kernel ring of every worker twice over, plus the catalogue and state files)
it stops reading the ring and says so in the log and the live state. The
kernel then drops what does not fit in the ring and counts every packet it
drops, so the loss is bounded by the ring and reported, never silent. When
retention (``bulk compress --max-disk``) has freed space, reading resumes and
the pause, its length and the packets dropped meanwhile are logged.

A capture interface that goes down. libpcap 1.9 (pcapy-ng's) reports "The
interface went down" and the handle is dead; with libpcap 1.10 (the libpcap
engine) the handle itself checks the interface while idle and reports the
same. The capture closes and finalises its file, logs the
moment, and tries to open the interface again every quarter of a second
(activation fails while the link is down); when it is back it opens the next
file and logs the gap: nothing is captured between the two times logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RESERVE_EXTRA = 4 << 20  # catalogue (sqlite journal), state, index side files, logs
RESUME_FACTOR = 1.5  # resume at 1.5x the reserve: no flapping at the edge
REOPEN_INTERVAL_S = 0.25


def space_reserve(buffer_size: int, workers: int) -> int:
    """Bytes that must stay free on the trace filesystem while capturing.

    One dispatch writes at most what the kernel ring holds when it starts plus
    what arrives meanwhile; twice the ring of every worker bounds it.
    """
    return 2 * buffer_size * workers + RESERVE_EXTRA


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged writer may still use (df's 'Avail')."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


@dataclass
class Outage:
    """Time spent without capturing, for one cause (disk full, link down)."""

    since_ns: int | None = None  # the outage going on now, if any
    since_mono: float = 0.0
    count: int = 0
    seconds: float = 0.0  # ended outages
    drops: int = 0  # packets the kernel counted as dropped during ended outages
    drops_at_start: int = 0
    last_start_ns: int | None = None
    last_end_ns: int | None = None

    def begin(self, now_ns: int, mono: float, drops: int) -> None:
        self.since_ns, self.since_mono, self.drops_at_start = now_ns, mono, drops
        self.count += 1
        self.last_start_ns, self.last_end_ns = now_ns, None

    def end(self, now_ns: int, mono: float, drops: int) -> tuple[float, int]:
        """Close the outage; returns its length in seconds and the drops during it."""
        length = mono - self.since_mono
        dropped = max(drops - self.drops_at_start, 0)
        self.seconds += length
        self.drops += dropped
        self.since_ns = None
        self.last_end_ns = now_ns
        return length, dropped
