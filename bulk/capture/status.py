"""What ``bulk status`` reports: captures (from pid and live state files) and the archive.

No IPC: a capture's workers rewrite their live state file every few seconds,
the pid file is checked with psutil, and the archive figures come from the
directory, the file system and the catalogue. The same figures render as
text, JSON, or the Prometheus text format for node_exporter's textfile
collector.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bulk.archive.catalogue import Catalogue, FileRecord
from bulk.archive.listing import OPEN_SUFFIX, traces_in_dir
from bulk.archive.naming import parse_name, state_dir
from bulk.archive.pidfile import captures_in, pidfile_path, read_pidfile, running_capture
from bulk.capture.state import STATE_PREFIX, LiveState, worker_states
from bulk.errors import BulkError
from bulk.summary import iso_ns

RECENT_FILES = 10
STALE_STATE_S = 30.0


@dataclass
class CaptureStatus:
    interface: str
    running: bool
    pid: int | None = None
    started_ns: int | None = None
    uptime_s: float | None = None
    workers: int = 0
    packets: int = 0
    bytes: int = 0
    received: int = 0
    drops: int = 0
    ifdrops: int = 0
    pps: float = 0.0
    bps: float = 0.0
    current_files: list[str] = field(default_factory=list)
    current_bytes: int = 0
    rotations: int = 0
    last_rotation_ns: int | None = None
    state_age_s: float | None = None  # seconds since the live state was written
    state_stale: bool = False
    # Outages (see bulk.capture.guard): now (since when) and in total since start.
    disk_full_since_ns: int | None = None
    disk_full_pauses: int = 0
    disk_full_seconds: float = 0.0
    disk_full_drops: int = 0
    link_down_since_ns: int | None = None
    link_downs: int = 0
    link_down_seconds: float = 0.0
    last_gap_start_ns: int | None = None
    last_gap_end_ns: int | None = None


@dataclass
class ArchiveStatus:
    directory: str
    files: int = 0
    open_files: int = 0
    bytes: int = 0
    fs_bytes: int = 0
    free_bytes: int = 0
    oldest_file: str | None = None
    oldest_ns: int | None = None
    newest_file: str | None = None
    newest_ns: int | None = None
    catalogue: bool = False
    recent: list[dict[str, Any]] = field(default_factory=list)  # last closed files


@dataclass
class Status:
    captures: list[CaptureStatus]
    archive: ArchiveStatus
    time_ns: int

    @property
    def running(self) -> bool:
        return bool(self.captures) and all(c.running for c in self.captures)


def capture_status(directory: str, interface: str, now_ns: int) -> CaptureStatus:
    info = running_capture(directory, interface)
    states = worker_states(directory, interface)
    st = CaptureStatus(interface, running=info is not None)
    if info is not None:
        st.pid = info.pid
        st.started_ns = info.started_ns
        st.uptime_s = (now_ns - info.started_ns) / 1e9 if info.started_ns else None
        # Only this run's state files count (a previous run's are older than its start).
        states = [s for s in states if s.started_ns >= info.started_ns - 1_000_000_000]
    else:
        last = read_pidfile(pidfile_path(directory, interface))
        st.pid = None
        st.started_ns = last.started_ns if last else None
    if states:
        _add_states(st, states, now_ns)
    return st


def _add_states(st: CaptureStatus, states: list[LiveState], now_ns: int) -> None:
    st.workers = len(states)
    st.packets = sum(s.packets for s in states)
    st.bytes = sum(s.bytes for s in states)
    st.received = sum(s.received for s in states)
    st.drops = sum(s.drops for s in states)
    st.ifdrops = sum(s.ifdrops for s in states)
    st.current_bytes = sum(s.current_bytes for s in states)
    st.rotations = max(s.rotations for s in states)
    st.current_files = [s.current_file for s in states if s.current_file]
    rotations = [s.last_rotation_ns for s in states if s.last_rotation_ns]
    st.last_rotation_ns = max(rotations) if rotations else None
    paused = [s.disk_full_since_ns for s in states if s.disk_full_since_ns is not None]
    st.disk_full_since_ns = min(paused) if paused else None
    st.disk_full_pauses = sum(s.disk_full_pauses for s in states)
    st.disk_full_seconds = sum(s.disk_full_seconds for s in states)
    st.disk_full_drops = sum(s.disk_full_drops for s in states)
    down = [s.link_down_since_ns for s in states if s.link_down_since_ns is not None]
    st.link_down_since_ns = min(down) if down else None
    st.link_downs = max(s.link_downs for s in states)
    st.link_down_seconds = max(s.link_down_seconds for s in states)
    gaps = [s for s in states if s.last_gap_start_ns is not None]
    if gaps:
        last = max(gaps, key=lambda s: s.last_gap_start_ns or 0)
        st.last_gap_start_ns, st.last_gap_end_ns = last.last_gap_start_ns, last.last_gap_end_ns
    oldest_update = min(s.updated_ns for s in states)
    st.state_age_s = (now_ns - oldest_update) / 1e9
    st.state_stale = st.running and st.state_age_s > STALE_STATE_S
    if st.running and not st.state_stale:
        st.pps = sum(s.pps for s in states)
        st.bps = sum(s.bps for s in states)


def archive_status(directory: str) -> ArchiveStatus:
    a = ArchiveStatus(directory)
    paths = (
        traces_in_dir(directory, include_open=True, with_empty_open=True)
        if os.path.isdir(directory)
        else []
    )
    for path in paths:
        try:
            a.bytes += os.path.getsize(path)
        except OSError:
            continue
        if path.endswith(OPEN_SUFFIX):
            a.open_files += 1
        else:
            a.files += 1
    try:
        vfs = os.statvfs(directory)
        a.fs_bytes = vfs.f_blocks * vfs.f_frsize
        a.free_bytes = vfs.f_bavail * vfs.f_frsize
    except OSError:
        pass
    records = _catalogue_files(directory)
    if records is not None:
        a.catalogue = True
        timed = [r for r in records if r.first_ns is not None]
        if timed:
            oldest = min(timed, key=lambda r: r.first_ns or 0)
            newest = max(timed, key=lambda r: r.last_ns or r.first_ns or 0)
            a.oldest_file, a.oldest_ns = oldest.name, oldest.first_ns
            a.newest_file, a.newest_ns = newest.name, newest.last_ns or newest.first_ns
        closed = [r for r in records if r.state != "open"]
        closed.sort(key=lambda r: r.closed_ns or r.opened_ns or 0)
        a.recent = [_recent(r) for r in closed[-RECENT_FILES:]]
    elif paths:
        # No catalogue: names sort by time; the name's time is when a file was opened.
        names = [os.path.relpath(p, directory) for p in paths]
        a.oldest_file, a.newest_file = names[0], names[-1]
        first = parse_name(os.path.basename(names[0]))
        a.oldest_ns = first.time_s * 1_000_000_000 if first else None
    return a


def _recent(r: FileRecord) -> dict[str, Any]:
    return {
        "name": r.name,
        "interface": r.interface,
        "state": r.state,
        "packets": r.packets,
        "bytes": r.bytes,
        "drops": r.drops,
        "ifdrops": r.ifdrops,
        "first_time": iso_ns(r.first_ns),
        "last_time": iso_ns(r.last_ns),
    }


def _catalogue_files(directory: str) -> list[FileRecord] | None:
    try:
        with Catalogue.open(directory, create=False, timeout=2.0) as cat:
            return cat.files()
    except BulkError:
        return None


def collect(directory: str, interface: str | None = None) -> Status:
    now = time.time_ns()
    interfaces = [interface] if interface else captures_in(directory)
    if not interface:
        # Interfaces whose pid file went (a clean stop) but whose state remains.
        seen = set(interfaces)
        for name in _state_interfaces(directory):
            if name not in seen:
                interfaces.append(name)
    captures = [capture_status(directory, i, now) for i in sorted(set(interfaces))]
    return Status(captures, archive_status(directory), now)


def _state_interfaces(directory: str) -> list[str]:
    try:
        names = os.listdir(state_dir(directory))
    except OSError:
        return []
    found = []
    for n in names:
        if n.startswith(STATE_PREFIX) and n.endswith(".json") and ".w" in n:
            found.append(n[len(STATE_PREFIX) : n.rindex(".w")])
    return found


# -- rendering -------------------------------------------------------------------


def to_json(status: Status) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "time": iso_ns(status.time_ns),
        "running": status.running,
        "captures": [],
        "archive": asdict(status.archive),
    }
    for c in status.captures:
        d = asdict(c)
        d["started_time"] = iso_ns(c.started_ns)
        d["last_rotation_time"] = iso_ns(c.last_rotation_ns)
        d["disk_full_since_time"] = iso_ns(c.disk_full_since_ns)
        d["link_down_since_time"] = iso_ns(c.link_down_since_ns)
        d["last_gap_start_time"] = iso_ns(c.last_gap_start_ns)
        d["last_gap_end_time"] = iso_ns(c.last_gap_end_ns)
        doc["captures"].append(d)
    a = doc["archive"]
    a["oldest_time"] = iso_ns(status.archive.oldest_ns)
    a["newest_time"] = iso_ns(status.archive.newest_ns)
    return doc


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _human_duration(s: float) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}h{m:02d}m{s:02d}s"


def to_text(status: Status) -> str:
    out: list[str] = []
    if not status.captures:
        out.append("capture: none known in this archive (no pid or state file)")
    for c in status.captures:
        if c.running:
            head = f"capture {c.interface}: running, pid {c.pid}"
            if c.uptime_s is not None:
                head += f", up {_human_duration(c.uptime_s)}"
            if c.workers > 1:
                head += f", {c.workers} workers"
            if c.state_stale:
                head += f" (live state {c.state_age_s:.0f} s old: capture stalled?)"
        else:
            head = f"capture {c.interface}: NOT running"
        out.append(head)
        if c.workers:
            if c.running:
                out.append(f"  rate now:      {c.pps:,.0f} packets/s, {_human_bytes(c.bps)}/s")
            out.append(
                f"  since start:   {c.packets:,} packets, {_human_bytes(c.bytes)}, "
                f"{c.drops:,} dropped by the kernel, {c.ifdrops:,} by the interface"
            )
            for name in c.current_files:
                out.append(f"  current file:  {name}")
            if c.last_rotation_ns:
                out.append(
                    f"  last rotation: {iso_ns(c.last_rotation_ns)} ({c.rotations} since start)"
                )
            out.extend(_outage_lines(c))
    a = status.archive
    used = 100.0 * (a.fs_bytes - a.free_bytes) / a.fs_bytes if a.fs_bytes else 0.0
    out.append(
        f"archive {a.directory}: {a.files} files + {a.open_files} open, {_human_bytes(a.bytes)}; "
        f"disk {_human_bytes(a.free_bytes)} free of {_human_bytes(a.fs_bytes)} ({used:.0f}% used)"
    )
    if a.oldest_file:
        out.append(f"  oldest trace:  {a.oldest_file} ({iso_ns(a.oldest_ns) or 'time unknown'})")
    if a.newest_file:
        out.append(f"  newest trace:  {a.newest_file} ({iso_ns(a.newest_ns) or 'time unknown'})")
    if not a.catalogue:
        out.append("  (no catalogue: run 'bulk index --rebuild' for per-file figures)")
    for r in a.recent:
        drops = "?" if r["drops"] is None else f"{r['drops']:,}"
        packets = "?" if r["packets"] is None else f"{r['packets']:,}"
        out.append(f"  {r['name']}: {packets} packets, {drops} drops")
    return "\n".join(out) + "\n"


def _outage_lines(c: CaptureStatus) -> list[str]:
    """Disk-full pauses and interface outages: now, and since the capture started."""
    out = []
    if c.disk_full_since_ns is not None:
        out.append(
            f"  DISK FULL:     capture paused since {iso_ns(c.disk_full_since_ns)} "
            "(the kernel drops packets until retention frees space)"
        )
    if c.disk_full_pauses:
        out.append(
            f"  disk full:     {c.disk_full_pauses} pauses since start, "
            f"{c.disk_full_seconds:.1f} s, {c.disk_full_drops:,} packets dropped meanwhile"
        )
    if c.link_down_since_ns is not None:
        out.append(
            f"  INTERFACE DOWN: nothing captured since {iso_ns(c.link_down_since_ns)} "
            "(capture resumes when it is back)"
        )
    if c.link_downs:
        gap = f"{iso_ns(c.last_gap_start_ns)} .. {iso_ns(c.last_gap_end_ns) or 'now'}"
        out.append(
            f"  interface down: {c.link_downs} times since start, {c.link_down_seconds:.1f} s "
            f"without capture; last gap {gap}"
        )
    return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_METRICS: list[tuple[str, str, str]] = [
    ("bulk_capture_up", "gauge", "1 when the capture of the interface is running"),
    ("bulk_capture_start_time_seconds", "gauge", "when the running capture started"),
    ("bulk_capture_workers", "gauge", "capture worker processes (PACKET_FANOUT)"),
    ("bulk_capture_packets_total", "counter", "packets written since the capture started"),
    ("bulk_capture_bytes_total", "counter", "trace bytes written since the capture started"),
    ("bulk_capture_received_total", "counter", "packets the kernel passed to the capture"),
    ("bulk_capture_drops_total", "counter", "packets dropped by the kernel (ring full)"),
    ("bulk_capture_interface_drops_total", "counter", "packets dropped by the interface"),
    ("bulk_capture_packets_per_second", "gauge", "packet rate over the last seconds"),
    ("bulk_capture_bytes_per_second", "gauge", "trace byte rate over the last seconds"),
    ("bulk_capture_current_file_bytes", "gauge", "bytes in the open trace file(s)"),
    ("bulk_capture_rotations_total", "counter", "file rotations since the capture started"),
    ("bulk_capture_last_rotation_timestamp_seconds", "gauge", "time of the last rotation"),
    ("bulk_capture_state_age_seconds", "gauge", "age of the live state file"),
    ("bulk_capture_disk_full", "gauge", "1 while capture is paused on a full trace filesystem"),
    ("bulk_capture_disk_full_pauses_total", "counter", "pauses on a full trace filesystem"),
    ("bulk_capture_disk_full_seconds_total", "counter", "seconds paused on a full filesystem"),
    ("bulk_capture_link_down", "gauge", "1 while the capture interface is down"),
    ("bulk_capture_link_downs_total", "counter", "times the capture interface went down"),
    ("bulk_capture_link_down_seconds_total", "counter", "seconds without capture, link down"),
    ("bulk_archive_files", "gauge", "closed trace files in the archive"),
    ("bulk_archive_open_files", "gauge", "trace files being written"),
    ("bulk_archive_bytes", "gauge", "bytes of trace files in the archive"),
    ("bulk_archive_filesystem_bytes", "gauge", "size of the archive's file system"),
    ("bulk_archive_free_bytes", "gauge", "bytes available on the archive's file system"),
    ("bulk_archive_oldest_timestamp_seconds", "gauge", "time of the oldest packet archived"),
    ("bulk_archive_newest_timestamp_seconds", "gauge", "time of the newest packet archived"),
]


def to_prometheus(status: Status) -> str:
    samples: dict[str, list[tuple[str, float]]] = {m[0]: [] for m in _METRICS}
    for c in status.captures:
        lab = f'interface="{_label(c.interface)}"'
        samples["bulk_capture_up"].append((lab, 1 if c.running else 0))
        if c.running and c.started_ns:
            samples["bulk_capture_start_time_seconds"].append((lab, c.started_ns / 1e9))
        if not c.running or not c.workers:
            continue  # a stopped capture's last counters are not live figures
        samples["bulk_capture_workers"].append((lab, c.workers))
        samples["bulk_capture_packets_total"].append((lab, c.packets))
        samples["bulk_capture_bytes_total"].append((lab, c.bytes))
        samples["bulk_capture_received_total"].append((lab, c.received))
        samples["bulk_capture_drops_total"].append((lab, c.drops))
        samples["bulk_capture_interface_drops_total"].append((lab, c.ifdrops))
        samples["bulk_capture_packets_per_second"].append((lab, c.pps))
        samples["bulk_capture_bytes_per_second"].append((lab, c.bps))
        samples["bulk_capture_current_file_bytes"].append((lab, c.current_bytes))
        samples["bulk_capture_rotations_total"].append((lab, c.rotations))
        if c.last_rotation_ns:
            samples["bulk_capture_last_rotation_timestamp_seconds"].append(
                (lab, c.last_rotation_ns / 1e9)
            )
        if c.state_age_s is not None:
            samples["bulk_capture_state_age_seconds"].append((lab, c.state_age_s))
        samples["bulk_capture_disk_full"].append((lab, int(c.disk_full_since_ns is not None)))
        samples["bulk_capture_disk_full_pauses_total"].append((lab, c.disk_full_pauses))
        samples["bulk_capture_disk_full_seconds_total"].append((lab, c.disk_full_seconds))
        samples["bulk_capture_link_down"].append((lab, int(c.link_down_since_ns is not None)))
        samples["bulk_capture_link_downs_total"].append((lab, c.link_downs))
        samples["bulk_capture_link_down_seconds_total"].append((lab, c.link_down_seconds))
    a = status.archive
    lab = f'directory="{_label(a.directory)}"'
    samples["bulk_archive_files"].append((lab, a.files))
    samples["bulk_archive_open_files"].append((lab, a.open_files))
    samples["bulk_archive_bytes"].append((lab, a.bytes))
    samples["bulk_archive_filesystem_bytes"].append((lab, a.fs_bytes))
    samples["bulk_archive_free_bytes"].append((lab, a.free_bytes))
    if a.oldest_ns is not None:
        samples["bulk_archive_oldest_timestamp_seconds"].append((lab, a.oldest_ns / 1e9))
    if a.newest_ns is not None:
        samples["bulk_archive_newest_timestamp_seconds"].append((lab, a.newest_ns / 1e9))
    out: list[str] = []
    for name, kind, text in _METRICS:
        if not samples[name]:
            continue
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples[name]:
            out.append(f"{name}{{{labels}}} {_number(value)}")
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def write_textfile(path: str, text: str) -> None:
    """Write atomically (node_exporter must never read half a file)."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
