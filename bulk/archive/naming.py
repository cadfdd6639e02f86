"""Archive file names, and the safe life of a file: created exclusively, finalised atomically.

A capture writes one series of files per interface (and per fanout worker)::

    bulk-20260127T131500Z-eth0-000042.pcap          closed
    bulk-20260127T131500Z-eth0-000042.pcap.open     being written
    bulk-20260127T131500Z-eth0-w1-000007.pcap.zst   worker 1's series, compressed

The UTC time the file was opened comes first, so names sort by time across
interfaces and workers; the sequence number counts the files of one series
and continues after a restart (the next number is one more than the highest
seen in the directory or recorded in the catalogue). Worker 0 has no ``-wK``
part, so one capture can change its worker count and keep its series.

A file is never overwritten: it is created with O_EXCL, and finalised by
linking the open name to the final name (which fails if that name exists)
after flush and fsync, then removing the open name. A crash between the two
leaves both names on one inode; ``finalise`` and the startup repair recognise it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from dataclasses import dataclass, replace

from bulk.archive.listing import OPEN_SUFFIX
from bulk.errors import ArchiveError

PREFIX = "bulk-"
EXTENSION = ".pcap"
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
SEQ_WIDTH = 6
_NAME = re.compile(
    r"^bulk-(?P<time>\d{8}T\d{6}Z)-(?P<iface>.+?)(?:-w(?P<worker>\d+))?-(?P<seq>\d{6,})"
    r"\.pcap(?P<suffix>(?:\.[A-Za-z0-9]+)*)$"
)


@dataclass(frozen=True)
class TraceName:
    """The parts of an archive file name."""

    time_s: int  # UTC seconds at which the file was opened
    interface: str
    seq: int
    worker: int = 0
    suffix: str = ""  # "", ".open", ".zst", ".gz", ...

    @property
    def name(self) -> str:
        stamp = time.strftime(_TIME_FORMAT, time.gmtime(self.time_s))
        worker = f"-w{self.worker}" if self.worker else ""
        seq = f"{self.seq:0{SEQ_WIDTH}d}"
        return f"{PREFIX}{stamp}-{self.interface}{worker}-{seq}{EXTENSION}{self.suffix}"

    @property
    def is_open(self) -> bool:
        return self.suffix == OPEN_SUFFIX

    @property
    def final(self) -> TraceName:
        """The name this file gets when finalised (uncompressed, not open)."""
        return replace(self, suffix="")

    @property
    def open(self) -> TraceName:
        return replace(self, suffix=OPEN_SUFFIX)


def parse_name(name: str) -> TraceName | None:
    """Parse a base name; None when it is not an archive name made by ``bulk capture``."""
    m = _NAME.match(name)
    if m is None:
        return None
    # Here, where strptime loads it anyway: calendar (and the datetime it
    # imports) is 1-3 ms of the start of commands that never parse a name.
    import calendar  # noqa: PLC0415

    try:
        stamp = time.strptime(m.group("time"), _TIME_FORMAT)
    except ValueError:
        return None
    return TraceName(
        time_s=calendar.timegm(stamp),
        interface=m.group("iface"),
        seq=int(m.group("seq")),
        worker=int(m.group("worker") or 0),
        suffix=m.group("suffix"),
    )


def check_interface_name(interface: str) -> None:
    """Refuse interface names that cannot be part of a file name."""
    if not interface or "/" in interface or interface in (".", "..") or "\0" in interface:
        raise ArchiveError(f"{interface!r}: not usable as an interface name")


def series_names(directory: str, interface: str, worker: int | None = None) -> list[TraceName]:
    """The archive names of one interface (one worker's series, or all) in ``directory``."""
    try:
        entries = os.listdir(directory)
    except OSError as exc:
        raise ArchiveError(f"{directory}: cannot list: {exc.strerror}") from None
    found = []
    for entry in entries:
        parsed = parse_name(entry)
        if parsed is None or parsed.interface != interface:
            continue
        if worker is None or parsed.worker == worker:
            found.append(parsed)
    found.sort(key=lambda n: (n.worker, n.seq))
    return found


def highest_seq(directory: str, interface: str, worker: int) -> int:
    """The highest sequence number of a series in ``directory`` (0 when none)."""
    return max((n.seq for n in series_names(directory, interface, worker)), default=0)


def create_exclusive(
    directory: str, name: TraceName, attempts: int = 1000
) -> tuple[str, TraceName]:
    """Create an empty file for ``name`` without ever reusing an existing name.

    When the series already holds a file with this sequence number (open,
    final or compressed, whatever its time), the sequence number moves on.
    Returns the created path and the name used.
    """
    for _ in range(attempts):
        taken = any(
            parsed is not None
            and (parsed.interface, parsed.worker, parsed.seq)
            == (name.interface, name.worker, name.seq)
            for parsed in (parse_name(e) for e in _names_with_seq(directory, name))
        )
        if not taken:
            path = os.path.join(directory, name.name)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            except FileExistsError:
                pass
            except OSError as exc:
                raise ArchiveError(f"{path}: cannot create: {exc.strerror}") from None
            else:
                os.close(fd)
                return path, name
        name = replace(name, seq=name.seq + 1)
    raise ArchiveError(f"{directory}: no free file name after {attempts} attempts")


def _names_with_seq(directory: str, name: TraceName) -> list[str]:
    seq = f"-{name.seq:0{SEQ_WIDTH}d}{EXTENSION}"
    try:
        return [e for e in os.listdir(directory) if seq in e]
    except OSError as exc:
        raise ArchiveError(f"{directory}: cannot list: {exc.strerror}") from None


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finalise(open_path: str) -> str:
    """Make ``X.pcap.open`` final as ``X.pcap``: fsync, link, unlink, fsync the directory.

    Never overwrites: if ``X.pcap`` exists and is another file, ArchiveError.
    If it is the same file (a crash between link and unlink), the open name
    is just removed. Returns the final path.
    """
    if not open_path.endswith(OPEN_SUFFIX):
        raise ArchiveError(f"{open_path}: not an open trace (no {OPEN_SUFFIX} suffix)")
    final_path = open_path[: -len(OPEN_SUFFIX)]
    fsync_path(open_path)
    try:
        os.link(open_path, final_path)
    except FileExistsError:
        if not os.path.samefile(open_path, final_path):
            raise ArchiveError(f"{final_path}: exists already; {open_path} left as it is") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise ArchiveError(f"{final_path}: cannot finalise: {exc.strerror}") from None
        # A file system without hard links: rename, after checking the name is free.
        if os.path.lexists(final_path):
            raise ArchiveError(f"{final_path}: exists already; {open_path} left as it is") from None
        os.rename(open_path, final_path)
        fsync_dir(os.path.dirname(final_path) or ".")
        return final_path
    with contextlib.suppress(FileNotFoundError):  # another process finished the job
        os.unlink(open_path)
    fsync_dir(os.path.dirname(final_path) or ".")
    return final_path


STATE_DIRNAME = ".bulk"


def state_dir(directory: str, create: bool = False) -> str:
    """``DIR/.bulk``: the catalogue, pid files, live state and logs of an archive.

    Readers of the archive skip it (names starting with a dot are not traces).
    """
    path = os.path.join(directory, STATE_DIRNAME)
    if create:
        try:
            os.makedirs(path, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"{path}: cannot create: {exc.strerror}") from None
    return path
