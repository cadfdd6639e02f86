"""The archive catalogue: one sqlite3 database beside the traces (``DIR/.bulk/catalogue.sqlite``).

One row per trace file (name, interface, sequence, state, times, packets,
bytes, kernel drops), a sparse time index per file (see
:mod:`bulk.archive.scan`) and, for compressed files, a frame index. The schema
is versioned with ``PRAGMA user_version`` and documented in
docs/ARCHITECTURE.md ("Archive and catalogue").

The catalogue is a cache of what the files hold, plus what only the capture
knew (kernel drops, open and close times): readers never need it to read a
trace, and :meth:`Catalogue.rebuild` recreates it from the files.

Several processes write at once (capture, rotate, compress, analysis): the
database runs in WAL mode with a busy timeout, and every change is one short
``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bulk.archive.listing import OPEN_SUFFIX, traces_in_dir
from bulk.archive.naming import parse_name, state_dir
from bulk.errors import ArchiveError, TraceError

if TYPE_CHECKING:
    import sqlite3

    from bulk.archive.scan import IndexEntry, TraceScan

SCHEMA_VERSION = 1
CATALOGUE_NAME = "catalogue.sqlite"
BUSY_TIMEOUT_S = 30.0
STATES = ("open", "closed", "compressed")
_NO_END = 1 << 62

_SCHEMA = """
CREATE TABLE files (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL CHECK (state IN ('open', 'closed', 'compressed')),
    interface   TEXT,
    worker      INTEGER NOT NULL DEFAULT 0,
    seq         INTEGER,
    linktype    INTEGER,
    snaplen     INTEGER,
    nanosecond  INTEGER NOT NULL DEFAULT 0,
    packets     INTEGER,
    bytes       INTEGER,
    size        INTEGER,
    raw_size    INTEGER,
    first_ns    INTEGER,
    last_ns     INTEGER,
    drops       INTEGER,
    ifdrops     INTEGER,
    opened_ns   INTEGER,
    closed_ns   INTEGER,
    compression TEXT,
    indexed     INTEGER NOT NULL DEFAULT 0,
    updated_ns  INTEGER NOT NULL
);
CREATE INDEX files_by_time ON files (first_ns, last_ns);
CREATE INDEX files_by_series ON files (interface, worker, seq);
CREATE TABLE time_index (
    file_id  INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    packet   INTEGER NOT NULL,
    offset   INTEGER NOT NULL,
    ts_ns    INTEGER NOT NULL,
    min_ns   INTEGER NOT NULL,
    max_ns   INTEGER NOT NULL,
    PRIMARY KEY (file_id, packet)
) WITHOUT ROWID;
CREATE TABLE frame_index (
    file_id     INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    frame       INTEGER NOT NULL,
    raw_offset  INTEGER NOT NULL,
    raw_size    INTEGER NOT NULL,
    comp_offset INTEGER NOT NULL,
    comp_size   INTEGER NOT NULL,
    first_ns    INTEGER,
    last_ns     INTEGER,
    packets     INTEGER,
    PRIMARY KEY (file_id, frame)
) WITHOUT ROWID;
CREATE TABLE series (
    interface TEXT NOT NULL,
    worker    INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    PRIMARY KEY (interface, worker)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class FileRecord:
    """One trace file of the archive. Times are ns since the epoch; None is unknown.

    ``name`` is relative to the archive directory and changes with the state
    (``X.pcap.open`` -> ``X.pcap`` -> ``X.pcap.zst``). ``first_ns``/``last_ns``
    are the earliest and latest packet times (not file order). ``bytes`` counts
    captured packet bytes, ``size`` the file on disk, ``raw_size`` the
    uncompressed pcap. ``drops``/``ifdrops`` are the kernel's drop counters
    while this file was being written. ``indexed`` says the totals and the
    time index come from a full scan of the closed file.
    """

    name: str
    state: str
    interface: str | None = None
    worker: int = 0
    seq: int | None = None
    linktype: int | None = None
    snaplen: int | None = None
    nanosecond: bool = False
    packets: int | None = None
    bytes: int | None = None
    size: int | None = None
    raw_size: int | None = None
    first_ns: int | None = None
    last_ns: int | None = None
    drops: int | None = None
    ifdrops: int | None = None
    opened_ns: int | None = None
    closed_ns: int | None = None
    compression: str | None = None
    indexed: bool = False
    updated_ns: int = 0
    id: int | None = None


@dataclass(frozen=True)
class FrameEntry:
    """One independently decodable compressed frame of a compressed trace."""

    frame: int
    raw_offset: int  # where its bytes start in the uncompressed pcap stream
    raw_size: int
    comp_offset: int  # where the frame starts in the compressed file
    comp_size: int
    first_ns: int | None = None
    last_ns: int | None = None
    packets: int | None = None


@dataclass
class RebuildReport:
    files: int = 0
    open_files: int = 0
    removed: int = 0
    index_entries: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


_FIELDS = tuple(f.name for f in dataclasses.fields(FileRecord) if f.name != "id")
_COLUMNS = ("id", *_FIELDS)
# Statements built from the FileRecord field names (constants); values are always bound.
_INSERT = (
    f"INSERT INTO files ({', '.join(_FIELDS)}) "  # noqa: S608
    f"VALUES ({', '.join(':' + f for f in _FIELDS)})"
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM files"  # noqa: S608


def _update_sql(fields: Iterable[str], key: str) -> str:
    """``UPDATE files SET a = :a, ... WHERE key = :_key`` for known field names only."""
    names = list(fields)
    unknown = set(names) - set(_FIELDS)
    if unknown:
        raise ArchiveError(f"unknown catalogue field(s): {', '.join(sorted(unknown))}")
    sets = ", ".join(f"{k} = :{k}" for k in names)
    return f"UPDATE files SET {sets} WHERE {key} = :_key"  # noqa: S608


def catalogue_path(directory: str) -> str:
    return os.path.join(state_dir(directory), CATALOGUE_NAME)


def now_ns() -> int:
    return time.time_ns()


class Catalogue:
    """A connection to one archive's catalogue. Use :meth:`open`; close it (or ``with``).

    Not shared between threads or processes: each opens its own.
    """

    def __init__(self, directory: str, conn: sqlite3.Connection, path: str) -> None:
        self.directory = directory
        self.path = path
        self._conn = conn

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(
        cls, directory: str, create: bool = True, timeout: float = BUSY_TIMEOUT_S
    ) -> Catalogue:
        """Open (and with ``create``, create) the catalogue of ``directory``."""
        path = os.path.join(state_dir(directory, create=create), CATALOGUE_NAME)
        if not create and not os.path.exists(path):
            raise ArchiveError(
                f"{directory}: no catalogue (run 'bulk index --rebuild --dir {directory}')"
            )
        # Here, not at the top: bulk compress imports this module for archives
        # that may have no catalogue, and sqlite3 (with datetime) is ~3 ms.
        import sqlite3  # noqa: PLC0415

        try:
            conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise ArchiveError(f"{path}: cannot open catalogue: {exc}") from None
        cat = cls(directory, conn, path)
        try:
            cat._setup(create, timeout)
        except BaseException:
            conn.close()
            raise
        return cat

    def _setup(self, create: bool, timeout: float) -> None:
        with self._errors():
            c = self._conn
            c.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            c.execute("PRAGMA foreign_keys = ON")
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                c.execute("PRAGMA synchronous = NORMAL")
                return
            if version > SCHEMA_VERSION:
                raise ArchiveError(
                    f"{self.path}: catalogue schema {version} is newer than this bulk "
                    f"understands ({SCHEMA_VERSION})"
                )
            if not create:
                raise ArchiveError(f"{self.path}: catalogue not initialised")
            mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ArchiveError(f"{self.path}: cannot switch the catalogue to WAL mode")
            c.execute("PRAGMA synchronous = NORMAL")
            c.execute("BEGIN IMMEDIATE")
            try:
                version = c.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            c.execute(statement)
                    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        import sqlite3  # noqa: PLC0415 - loaded by open()

        try:
            yield
        except sqlite3.Error as exc:
            raise ArchiveError(f"{self.path}: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._errors():
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    # -- files -------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> FileRecord:
        """Insert a file; ArchiveError when the name is catalogued already."""
        if record.state not in STATES:
            raise ArchiveError(f"bad state {record.state!r}")
        values = dataclasses.asdict(record)
        values["updated_ns"] = now_ns()
        values.pop("id")
        import sqlite3  # noqa: PLC0415 - loaded by open()

        with self._write() as c:
            try:
                cur = c.execute(_INSERT, values)
            except sqlite3.IntegrityError:
                raise ArchiveError(f"{record.name}: already in the catalogue") from None
            if record.interface is not None and record.seq is not None:
                self._note_seq(c, record.interface, record.worker, record.seq)
            rowid = cur.lastrowid
        return dataclasses.replace(record, id=rowid, updated_ns=values["updated_ns"])

    def update_file(self, name: str, /, **changes: Any) -> FileRecord:
        """Change fields of the file called ``name`` (``name=`` renames it).

        For example, compression::

            cat.update_file("X.pcap", name="X.pcap.zst", state="compressed",
                            compression="zstd", size=os.path.getsize(...))
        """
        if "state" in changes and changes["state"] not in STATES:
            raise ArchiveError(f"bad state {changes['state']!r}")
        changes["updated_ns"] = now_ns()
        sql = _update_sql(changes, "name")
        import sqlite3  # noqa: PLC0415 - loaded by open()

        with self._write() as c:
            try:
                cur = c.execute(sql, {**changes, "_key": name})
            except sqlite3.IntegrityError:
                raise ArchiveError(f"{changes.get('name')}: already in the catalogue") from None
            if cur.rowcount == 0:
                raise ArchiveError(f"{name}: not in the catalogue")
        record = self.get(changes.get("name", name))
        assert record is not None
        return record

    def remove_file(self, name: str) -> bool:
        """Forget a file (its index goes with it). True when it was there."""
        with self._write() as c:
            return c.execute("DELETE FROM files WHERE name = ?", (name,)).rowcount > 0

    def get(self, name: str) -> FileRecord | None:
        with self._errors():
            row = self._conn.execute(_SELECT + " WHERE name = ?", (name,)).fetchone()
        return _record(row) if row else None

    def files(
        self,
        start_ns: int | None = None,
        end_ns: int | None = None,
        interface: str | None = None,
        states: Sequence[str] | None = None,
    ) -> list[FileRecord]:
        """Files whose packets may fall in ``[start_ns, end_ns)``, ordered by first time.

        With a window, files known to be empty are left out, an open file
        counts as reaching into the future, and a closed file not yet indexed
        as reaching its close time (no packet is read after it).
        """
        where = []
        params: list[Any] = []
        if interface is not None:
            where.append("interface = ?")
            params.append(interface)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(states)
        if start_ns is not None or end_ns is not None:
            where.append("NOT (packets = 0 AND state != 'open')")
        if start_ns is not None:
            where.append("(state = 'open' OR coalesce(last_ns, closed_ns, ?) >= ?)")
            params.extend([_NO_END, start_ns])
        if end_ns is not None:
            where.append("coalesce(first_ns, opened_ns, 0) < ?")
            params.append(end_ns)
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY coalesce(first_ns, opened_ns), name"
        with self._errors():
            return [_record(r) for r in self._conn.execute(sql, params)]

    def path_of(self, record: FileRecord | str) -> str:
        name = record.name if isinstance(record, FileRecord) else record
        return os.path.join(self.directory, name)

    # -- indexes -----------------------------------------------------------------

    def time_index(self, name: str) -> list[IndexEntry]:
        """The sparse time index of a file, in file order (empty when not indexed)."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT t.packet, t.offset, t.ts_ns, t.min_ns, t.max_ns FROM time_index t "
                "JOIN files f ON f.id = t.file_id WHERE f.name = ? ORDER BY t.packet",
                (name,),
            ).fetchall()
        # The scanner is loaded by the methods that index, not with the module:
        # bulk compress never indexes (~2 ms of its start).
        from bulk.archive.scan import IndexEntry  # noqa: PLC0415

        return [IndexEntry(*r) for r in rows]

    def start_offset(self, name: str, start_ns: int) -> tuple[int, int]:
        """Where to start reading ``name`` (uncompressed byte offset, record number) to
        meet every packet at or after ``start_ns``: every record before it is older."""
        best = (24, 0)
        seen_max: int | None = None
        for entry in self.time_index(name):
            if seen_max is not None and seen_max >= start_ns:
                break
            best = (entry.offset, entry.packet)
            seen_max = entry.max_ns if seen_max is None else max(seen_max, entry.max_ns)
        return best

    def set_time_index(self, name: str, entries: Iterable[IndexEntry]) -> None:
        with self._write() as c:
            file_id = self._id(c, name)
            c.execute("DELETE FROM time_index WHERE file_id = ?", (file_id,))
            c.executemany(
                "INSERT INTO time_index VALUES (?, ?, ?, ?, ?, ?)",
                [_index_row(file_id, e) for e in entries],
            )

    def frame_index(self, name: str) -> list[FrameEntry]:
        with self._errors():
            rows = self._conn.execute(
                "SELECT x.frame, x.raw_offset, x.raw_size, x.comp_offset, x.comp_size, "
                "x.first_ns, x.last_ns, x.packets FROM frame_index x "
                "JOIN files f ON f.id = x.file_id WHERE f.name = ? ORDER BY x.frame",
                (name,),
            ).fetchall()
        return [FrameEntry(*r) for r in rows]

    def set_frame_index(self, name: str, frames: Iterable[FrameEntry]) -> None:
        with self._write() as c:
            file_id = self._id(c, name)
            c.execute("DELETE FROM frame_index WHERE file_id = ?", (file_id,))
            c.executemany(
                "INSERT INTO frame_index VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        file_id,
                        f.frame,
                        f.raw_offset,
                        f.raw_size,
                        f.comp_offset,
                        f.comp_size,
                        f.first_ns,
                        f.last_ns,
                        f.packets,
                    )
                    for f in frames
                ],
            )

    def _id(self, c: sqlite3.Connection, name: str) -> int:
        row = c.execute("SELECT id FROM files WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ArchiveError(f"{name}: not in the catalogue")
        return int(row[0])

    # -- sequence numbers ---------------------------------------------------------

    def last_seq(self, interface: str, worker: int) -> int:
        """The highest sequence number ever used by a series (0 when none)."""
        with self._errors():
            row = self._conn.execute(
                "SELECT max(coalesce((SELECT last_seq FROM series WHERE interface = ?1 "
                "AND worker = ?2), 0), coalesce((SELECT max(seq) FROM files WHERE "
                "interface = ?1 AND worker = ?2), 0))",
                (interface, worker),
            ).fetchone()
        return int(row[0] or 0)

    def note_seq(self, interface: str, worker: int, seq: int) -> None:
        with self._write() as c:
            self._note_seq(c, interface, worker, seq)

    @staticmethod
    def _note_seq(c: sqlite3.Connection, interface: str, worker: int, seq: int) -> None:
        c.execute(
            "INSERT INTO series VALUES (?, ?, ?) ON CONFLICT (interface, worker) "
            "DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            (interface, worker, seq),
        )

    # -- scanning ----------------------------------------------------------------

    def record_scan(self, name: str, scan: TraceScan, /, **changes: Any) -> FileRecord:
        """Store what a full scan of a file found (totals, times, time index) in one
        transaction, adding the file when it is new. ``changes`` set more fields."""
        fields: dict[str, Any] = {
            "linktype": scan.linktype if scan.linktype >= 0 else None,
            "snaplen": scan.snaplen,
            "nanosecond": scan.nanosecond,
            "packets": scan.packets,
            "bytes": scan.bytes,
            "raw_size": scan.end_offset,
            "first_ns": db_ns(scan.min_ns),
            "last_ns": db_ns(scan.max_ns),
            "indexed": True,
            **changes,
        }
        path = self.path_of(changes.get("name", name))
        if "size" not in fields:
            try:
                fields["size"] = os.path.getsize(path)
            except OSError:
                pass
        fields["updated_ns"] = now_ns()
        sql = _update_sql(fields, "id")
        with self._write() as c:
            row = c.execute("SELECT id FROM files WHERE name = ?", (name,)).fetchone()
            if row is None:
                base = _record_from_name(changes.get("name", name))
                values = {**dataclasses.asdict(base), **fields}
                values.pop("id")
                cur = c.execute(_INSERT, values)
                file_id = int(cur.lastrowid or 0)
                if values["interface"] is not None and values["seq"] is not None:
                    self._note_seq(c, values["interface"], values["worker"], values["seq"])
            else:
                file_id = int(row[0])
                c.execute(sql, {**fields, "_key": file_id})
            c.execute("DELETE FROM time_index WHERE file_id = ?", (file_id,))
            c.executemany(
                "INSERT INTO time_index VALUES (?, ?, ?, ?, ?, ?)",
                [_index_row(file_id, e) for e in scan.entries],
            )
        record = self.get(changes.get("name", name))
        assert record is not None
        return record

    def index_file(self, path: str, /, **changes: Any) -> tuple[FileRecord, TraceScan]:
        """Scan a file of this archive and record it (added when new).

        The state follows the name: ``.open`` open, ``.zst``/``.gz`` compressed,
        else closed, unless ``changes`` says otherwise.
        """
        name = os.path.relpath(path, self.directory)
        if name.startswith(".." + os.sep):
            raise ArchiveError(f"{path}: not inside the archive {self.directory}")
        from bulk.archive.scan import scan_trace  # noqa: PLC0415 - see time_index

        scan = scan_trace(path)
        changes.setdefault("state", _state_from_name(name))
        compression = scan.compression or _compression_from_name(name)
        if compression:
            changes.setdefault("compression", compression)
        return self.record_scan(name, scan, **changes), scan

    def rebuild(self, progress: Any = None) -> RebuildReport:
        """Re-scan every trace of the directory and make the catalogue match the files.

        Rows of missing files go; each file is scanned again. What only the
        capture knew (drops, open and close times) and the frame index of a
        compressed file are kept when the file's size has not changed. Open
        files (``.open``) are recorded as open without being scanned.
        """
        from bulk.archive.scan import scan_trace  # noqa: PLC0415 - see time_index

        report = RebuildReport()
        on_disk = traces_in_dir(self.directory, include_open=True, with_empty_open=True)
        names = {os.path.relpath(p, self.directory) for p in on_disk}
        with self._errors():
            known = {r[0]: r[1] for r in self._conn.execute("SELECT name, size FROM files")}
        for gone in sorted(set(known) - names):
            self.remove_file(gone)
            report.removed += 1
        for path in on_disk:
            name = os.path.relpath(path, self.directory)
            parsed = parse_name(os.path.basename(name))
            if parsed is not None:
                self.note_seq(parsed.interface, parsed.worker, parsed.seq)
            if name.endswith(OPEN_SUFFIX):
                report.open_files += 1
                if name not in known:
                    self.add_file(_record_from_name(name))
                continue
            try:
                size = os.path.getsize(path)
                scan = scan_trace(path)
            except (TraceError, OSError) as exc:
                report.errors.append(f"{path}: {exc}")
                continue
            keep_extra = name in known and known[name] == size
            changes: dict[str, Any] = {"state": _state_from_name(name), "size": size}
            compression = scan.compression or _compression_from_name(name)
            changes["compression"] = compression
            if not keep_extra:
                changes.update(drops=None, ifdrops=None)
                if name in known:
                    self.set_frame_index(name, [])
            self.record_scan(name, scan, **changes)
            if scan.error:
                report.errors.append(f"{path}: {scan.error} (indexed up to byte {scan.end_offset})")
            report.files += 1
            report.index_entries += len(scan.entries)
            if progress is not None:
                progress(name, scan)
        return report


_INT64_MAX = (1 << 63) - 1


def db_ns(ns: int | None) -> int | None:
    """A time as SQLite can store it (64-bit): a damaged trace's packet times can
    lie centuries away, beyond what 64-bit nanoseconds hold; they are clamped."""
    if ns is None:
        return None
    return max(-_INT64_MAX - 1, min(ns, _INT64_MAX))


def _index_row(
    file_id: int, e: IndexEntry
) -> tuple[int, int, int, int | None, int | None, int | None]:
    return (file_id, e.packet, e.offset, db_ns(e.ts_ns), db_ns(e.min_ns), db_ns(e.max_ns))


def _record(row: Sequence[Any]) -> FileRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["nanosecond"] = bool(values["nanosecond"])
    values["indexed"] = bool(values["indexed"])
    return FileRecord(**values)


def _state_from_name(name: str) -> str:
    if name.endswith(OPEN_SUFFIX):
        return "open"
    return "compressed" if _compression_from_name(name) else "closed"


def _compression_from_name(name: str) -> str | None:
    if name.endswith(".zst"):
        return "zstd"
    if name.endswith(".gz"):
        return "gzip"
    return None


def _record_from_name(name: str) -> FileRecord:
    """What a file name says: state, and for archive names interface, worker, sequence, time."""
    parsed = parse_name(os.path.basename(name))
    state = _state_from_name(name)
    if parsed is None:
        return FileRecord(name=name, state=state, compression=_compression_from_name(name))
    return FileRecord(
        name=name,
        state=state,
        interface=parsed.interface,
        worker=parsed.worker,
        seq=parsed.seq,
        opened_ns=parsed.time_s * 1_000_000_000,
        compression=_compression_from_name(name),
    )
