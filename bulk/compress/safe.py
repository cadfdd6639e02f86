"""The crash-safe replace of a trace by its compressed copy, and the sweep that
finishes or undoes one cut short.

For ``X.pcap`` the steps are: write ``.X.pcap.zst.partial`` (hidden, never a
trace name), verifying every frame as it is written (read back from the file,
decompressed with the format's own checksum, compared byte for byte with the
original bytes it was made from), fsync it, check the index read back (sizes,
packet counts) and that the original did not change, give it the original's times and
mode, link it to ``X.pcap.zst`` (never overwriting) and drop the temporary
name, fsync the directory, record it in the catalogue, move side files, then
delete ``X.pcap`` and fsync the directory again. A crash at any point leaves
the original, or the verified compressed file, or both; never neither, and
never a partial file under a trace name.

:func:`sweep` runs at the start of every run: it deletes leftover temporary
files and, where ``X.pcap`` and ``X.pcap.zst`` both exist, verifies the
compressed file against the original again and finishes the job (or, if they
differ, leaves both and says so).

``BULK_COMPRESS_CRASH_AT=<point>`` makes the process ``os._exit(137)`` at that
point, for tests: after-write, after-fsync, after-verify, after-rename,
after-catalogue, after-delete; and, in retention's deletion of a trace,
retention-after-unlink, retention-after-catalogue.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from bulk.archive.catalogue import Catalogue, FileRecord, FrameEntry
from bulk.archive.listing import OPEN_SUFFIX, is_trace_name
from bulk.archive.locks import is_locked, try_lock
from bulk.archive.naming import STATE_DIRNAME
from bulk.compress.codec import (
    FORMATS,
    Compressed,
    CompressSettings,
    check_index,
    compress_stream,
    fsync_dir,
    verify,
)
from bulk.errors import ArchiveError
from bulk.trace.seekable import SeekableTrace, Workers

CRASH_ENV = "BULK_COMPRESS_CRASH_AT"
CRASH_POINTS = (
    "after-write",
    "after-fsync",
    "after-verify",
    "after-rename",
    "after-catalogue",
    "after-delete",
)
# Where retention's deletion of one trace may die (same hook).
RETENTION_CRASH_POINTS = ("retention-after-unlink", "retention-after-catalogue")
TEMP_SUFFIX = ".partial"
# A closed trace whose catalogue row still has the open name is left alone for
# this long after its last write (the capture catalogues it meanwhile).
CATALOGUE_GRACE_S = 600.0
# Per-trace side files kept by other commands, named after the trace: X.pcap.idx.
SIDE_SUFFIXES = (".idx",)
COMPRESSED_SUFFIXES = tuple(FORMATS.values())

Log = Callable[[str], None]


def crash_point(point: str) -> None:
    """Die here if the test hook asks for it (no cleanup, like a power cut)."""
    if os.environ.get(CRASH_ENV) == point:
        os._exit(137)


def temp_path(final_path: str) -> str:
    head, tail = os.path.split(final_path)
    return os.path.join(head, f".{tail}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return (
        name.startswith(".")
        and name.endswith(TEMP_SUFFIX)
        and name[1 : -len(TEMP_SUFFIX)].endswith(COMPRESSED_SUFFIXES)
    )


def can_compress(path: str, fmt: str) -> bool:
    """A closed, uncompressed trace whose compressed name is a trace name too."""
    name = os.path.basename(path)
    if name.endswith(OPEN_SUFFIX) or name.endswith(COMPRESSED_SUFFIXES):
        return False
    return is_trace_name(name) and is_trace_name(name + FORMATS[fmt])


def side_files(path: str) -> list[str]:
    return [path + s for s in SIDE_SUFFIXES if os.path.lexists(path + s)]


def allocated(path: str) -> int:
    """Bytes the file takes on disk (blocks), with its side files."""
    total = 0
    for p in [path, *side_files(path)]:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        total += st.st_blocks * 512
    return total


class Archive:
    """The directory and, when it has one, its catalogue."""

    def __init__(self, directory: str, catalogue: Catalogue | None) -> None:
        self.directory = directory
        self.catalogue = catalogue

    def name(self, path: str) -> str:
        return os.path.relpath(path, self.directory)

    def record(self, path: str) -> FileRecord | None:
        if self.catalogue is None:
            return None
        return self.catalogue.get(self.name(path))

    def still_cataloguing(self, path: str) -> str | None:
        """Why the capture may not be done with a just-closed file, or None.

        The capture finalises ``X.pcap.open`` as ``X.pcap`` first, then scans it
        and renames its catalogue row: until then the row is still called
        ``X.pcap.open`` (or says ``open``), and compressing would race with it."""
        cat = self.catalogue
        if cat is None:
            return None
        try:
            if time.time() - os.stat(path).st_mtime > CATALOGUE_GRACE_S:
                return None  # long enough: the capture's catalogue update was lost
        except FileNotFoundError:
            return None
        rec = cat.get(self.name(path))
        if rec is None and cat.get(self.name(path) + OPEN_SUFFIX) is not None:
            return "the capture is still cataloguing it (its row is still the open file's)"
        if rec is not None and rec.state == "open":
            return "the catalogue still says it is open"
        return None

    def note_compressed(self, src: str, dst: str, fmt: str, index_of: SeekableTrace) -> None:
        """Record ``src`` as compressed into ``dst`` (idempotent: the sweep may repeat it)."""
        cat = self.catalogue
        if cat is None:
            return
        old, new = self.name(src), self.name(dst)
        idx = index_of.index
        size = os.path.getsize(dst)
        changes: dict[str, object] = {
            "state": "compressed",
            "compression": fmt,
            "size": size,
            "raw_size": idx.size,
            "packets": idx.packets,
        }
        if cat.get(old) is None and cat.get(old + OPEN_SUFFIX) is not None:
            old += OPEN_SUFFIX  # the capture never renamed its row: take it over
        if cat.get(old) is not None:
            if cat.get(new) is not None:
                cat.remove_file(new)
            cat.update_file(old, name=new, **changes)
        elif cat.get(new) is not None:
            cat.update_file(new, **changes)
        else:
            times = [f.min_ts for f in idx.frames if f.min_ts is not None]
            times += [f.max_ts for f in idx.frames if f.max_ts is not None]
            cat.add_file(
                FileRecord(
                    name=new,
                    state="compressed",
                    compression=fmt,
                    size=size,
                    raw_size=idx.size,
                    packets=idx.packets,
                    nanosecond=idx.layout.nanosecond,
                    snaplen=idx.layout.snaplen or None,
                    first_ns=min(times) if times else None,
                    last_ns=max(times) if times else None,
                )
            )
        cat.set_frame_index(
            new,
            [
                FrameEntry(
                    k,
                    f.decomp_offset,
                    f.decomp_size,
                    f.comp_offset,
                    f.comp_size,
                    f.min_ts,
                    f.max_ts,
                    f.packets,
                )
                for k, f in enumerate(idx.frames)
            ],
        )

    def note_deleted(self, path: str) -> None:
        if self.catalogue is not None:
            self.catalogue.remove_file(self.name(path))

    def forget_missing(self) -> list[str]:
        """Remove the rows of closed or compressed traces whose file is gone (a run
        killed between deleting a trace and its row left them); their names.

        Open rows are left alone: the capture renames the file before its row."""
        cat = self.catalogue
        if cat is None:
            return []
        gone = []
        for rec in cat.files(states=("closed", "compressed")):
            if not os.path.lexists(cat.path_of(rec)) and cat.remove_file(rec.name):
                gone.append(rec.name)
        return gone


@dataclass(frozen=True)
class Outcome:
    """One trace compressed."""

    src: str
    dst: str
    size: int
    comp_size: int
    packets: int
    frames: int
    seconds: float
    damage: str | None


def _link_no_replace(tmp: str, final: str) -> None:
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise ArchiveError(f"{final}: exists already; not overwritten") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.lexists(final):
            raise ArchiveError(f"{final}: exists already; not overwritten") from None
        os.rename(tmp, final)
        return
    os.unlink(tmp)


def _move_side_files(src: str, dst: str) -> None:
    for side in side_files(src):
        os.replace(side, dst + side[len(src) :])


def _delete_with_side_files(path: str) -> None:
    for side in side_files(path):
        os.unlink(side)
    os.unlink(path)


@dataclass
class Written:
    """A verified compressed copy under its final name, its original still there
    (open and locked in ``lock``): :func:`finish_one` records it and deletes the original."""

    src: str
    final: str
    fmt: str
    result: Compressed
    lock: BinaryIO
    started: float


def write_verified(src: str, settings: CompressSettings, workers: Workers | None = None) -> Written:
    """The first steps of the replace (see the module text): write, verify, fsync,
    rename. No catalogue here, so several files may be written at once from threads
    (sharing ``workers``, the compression and check threads)."""
    t0 = time.monotonic()
    final = src + FORMATS[settings.fmt]
    tmp = temp_path(final)
    directory = os.path.dirname(src) or "."
    if os.path.lexists(final):
        raise ArchiveError(f"{final}: exists already beside {src}; left both as they are")
    f = open(src, "rb")  # noqa: SIM115 - held (locked) until finish_one closes it
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveError(f"{src}: in use by another process (locked); skipped") from None
        st = os.fstat(f.fileno())
        try:
            # read-write: every frame is read back and verified as it is written
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, st.st_mode & 0o777)
        except FileExistsError:
            raise ArchiveError(f"{tmp}: exists (another compress?); skipped {src}") from None
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                # Every frame is verified as it is written (read back, decompressed,
                # compared with the original's bytes), overlapped with compression.
                result = compress_stream(f, out, settings, src, True, workers=workers)
                out.flush()
                crash_point("after-write")
                if os.geteuid() == 0:
                    os.fchown(out.fileno(), st.st_uid, st.st_gid)
                os.fchmod(out.fileno(), st.st_mode & 0o777)
                os.fsync(out.fileno())
            crash_point("after-fsync")
            now = os.stat(src)
            if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or (
                result.size != st.st_size
            ):
                raise ArchiveError(f"{src}: changed while being compressed; left as it is")
            check_index(tmp, result)
            crash_point("after-verify")
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            _link_no_replace(tmp, final)
            fsync_dir(directory)
            crash_point("after-rename")
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    except BaseException:
        f.close()
        raise
    return Written(src, final, settings.fmt, result, f, t0)


def finish_one(w: Written, archive: Archive) -> Outcome:
    """The last steps of the replace: catalogue, side files, delete the original."""
    src, final, result = w.src, w.final, w.result
    try:
        with SeekableTrace.open(final) as st_final:
            archive.note_compressed(src, final, w.fmt, st_final)
        crash_point("after-catalogue")
        _move_side_files(src, final)
        os.unlink(src)
        fsync_dir(os.path.dirname(src) or ".")
        crash_point("after-delete")
    finally:
        w.lock.close()
    return Outcome(
        src,
        final,
        result.size,
        result.comp_size,
        result.packets,
        len(result.index.frames),
        time.monotonic() - w.started,
        result.damage,
    )


def compress_one(src: str, settings: CompressSettings, archive: Archive) -> Outcome:
    """Replace ``src`` by its verified compressed copy (see the module text)."""
    return finish_one(write_verified(src, settings), archive)


def finish_pair(original: str, compressed: str, archive: Archive, log: Log) -> bool:
    """Both ``X.pcap`` and ``X.pcap.zst`` exist (a run was cut short after the rename):
    verify the compressed copy against the original and, if equal, finish the job."""
    fmt = "zstd" if compressed.endswith(".zst") else "gzip"
    differs: str | None = None
    try:
        verify(compressed, original, deep=True)
    except ArchiveError as exc:
        differs = str(exc)
    if differs is not None:
        log(
            f"warning: {original} and {compressed} both exist and differ ({differs}); "
            "left both as they are"
        )
        return False
    with SeekableTrace.open(compressed) as st:
        archive.note_compressed(original, compressed, fmt, st)
    _move_side_files(original, compressed)
    os.unlink(original)
    fsync_dir(os.path.dirname(original) or ".")
    log(f"finished an interrupted compression: {compressed} verified, {original} deleted")
    return True


def sweep(directory: str, archive: Archive, log: Log, dry_run: bool = False) -> list[str]:
    """Clean up after runs that were cut short; returns the paths acted on."""
    acted: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != STATE_DIRNAME and not d.startswith("."))
        names = set(files)
        for name in sorted(files):
            path = os.path.join(root, name)
            if is_temp_name(name):
                acted.append(path)
                if dry_run:
                    log(f"would remove leftover temporary file {path}")
                else:
                    os.unlink(path)
                    log(f"removed leftover temporary file {path}")
                continue
            if not name.endswith(COMPRESSED_SUFFIXES) or not is_trace_name(name):
                continue
            original = name.rsplit(".", 1)[0]
            if original in names and is_trace_name(original):
                acted.append(path)
                if dry_run:
                    log(f"would verify {path} against {original} and delete the original")
                else:
                    finish_pair(os.path.join(root, original), path, archive, log)
    return acted


def lock_run(directory: str) -> int | None:
    """Take the per-archive compress lock (``DIR/.bulk/compress.lock``); the fd, or
    None when another run holds it."""
    state = os.path.join(directory, STATE_DIRNAME)
    try:
        os.makedirs(state, mode=0o750, exist_ok=True)
        return try_lock(os.path.join(state, "compress.lock"))
    except OSError as exc:
        raise ArchiveError(f"{state}: cannot take the compress lock: {exc.strerror}") from None


def is_busy(path: str) -> bool:
    """True if another process holds the file's exclusive lock (a run compressing
    it). The probe is shared (:func:`bulk.archive.locks.is_locked`): two runs
    probing the same file at once do not see each other as its owner, as the
    exclusive probe this replaced could."""
    return is_locked(path)


def delete_trace(path: str, archive: Archive) -> None:
    _delete_with_side_files(path)
    crash_point("retention-after-unlink")
    archive.note_deleted(path)
    crash_point("retention-after-catalogue")
