"""Connection contents: each TCP direction's reassembled bytes in its own file.

For a connection from H1 port P1 (originator) to H2 port P2 (responder):

``contents.H1.P1.H2.P2``
    the bytes H1 sent (originator to responder);
``contents.H2.P2.H1.P1``
    the bytes H2 sent (responder to originator).

A file is named after the host that SENT its bytes, so a later change of
roles (a SYN seen late, an analyzer re-deciding from payload) never renames
anything; only the summary's orig/resp labels follow the roles.

* IPv6 addresses are written in RFC 5952 form with every ``:`` replaced by
  ``-`` (``contents.2001-db8--1.1234.2001-db8--2.80``): valid and unique on
  every file system, no shell quoting needed.
* A 4-tuple reused by a later connection (a new SYN after the old one ended,
  or a connection that was split by a timeout) gets a distinct suffix: the
  first connection has none, the next ``.c2``, then ``.c3``... (both files
  of one connection share the suffix). Nothing is ever appended to another
  connection's file.
* A hole in the stream (bytes never captured) is written as the visible
  marker ``<<gap N>>`` (N = missing bytes) and counted in the summary.
* Names are built only from parsed addresses and port numbers, checked to be
  a plain file name, and opened relative to the output directory without
  following symbolic links: output never escapes OUTDIR.
* Memory stays bounded: bytes are buffered per direction up to
  ``chunk_bytes`` and in total up to ``buffer_bytes`` before being written;
  at most ``max_open_files`` files are open at once (least recently used
  closed first, reopened in append mode).

``contents.jsonl`` gets one JSON line per TCP connection when it ends:
endpoints, start and end, bytes and gaps each way, and the file names.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from bulk.decode import PROTO_TCP
from bulk.errors import BulkError, UsageError
from bulk.flow.analyzer import Analyzer
from bulk.summary import iso_ns

if TYPE_CHECKING:
    from bulk.flow.table import Flow

SUMMARY_NAME = "contents.jsonl"
NAME_PREFIX = "contents."
GAP_MARKER = b"<<gap %d>>"

_IOV_MAX = 1024
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_MODE = 0o640  # payloads are sensitive: never world-readable


@dataclass(frozen=True)
class ContentsConfig:
    """Where contents go and how much memory / how many files they may use."""

    outdir: str
    max_open_files: int = 128
    chunk_bytes: int = 256 << 10  # per direction, before a write
    buffer_bytes: int = 64 << 20  # all directions together, before writing everything
    summary: bool = True

    def __post_init__(self) -> None:
        if self.max_open_files < 2:
            raise ValueError("max_open_files must be at least 2")


def host_label(host: str) -> str:
    """An address as it appears in file names (IPv6 ``:`` become ``-``)."""
    return host.replace(":", "-")


def stream_name(src_h: str, src_p: int, dst_h: str, dst_p: int, suffix: int = 1) -> str:
    """``contents.SRC.SPORT.DST.DPORT`` (``.cN`` appended for the N-th reuse, N >= 2)."""
    name = f"{NAME_PREFIX}{host_label(src_h)}.{src_p}.{host_label(dst_h)}.{dst_p}"
    if suffix > 1:
        name += f".c{suffix}"
    _check_name(name)
    return name


def _check_name(name: str) -> None:
    if (
        not name.startswith(NAME_PREFIX)
        or "/" in name
        or "\\" in name
        or "\0" in name
        or ".." in name
        or len(name) > 255
    ):
        raise BulkError(f"refusing unsafe output name {name!r}")


class _Conn:
    """Per-connection state of the contents analyzer (indexed by direction)."""

    __slots__ = (
        "buflen",
        "bufs",
        "created",
        "flow",
        "gap_bytes",
        "gaps",
        "names",
        "nbytes",
        "suffix",
    )

    def __init__(self, flow: Flow) -> None:
        self.flow: Flow | None = flow  # to name files on the first write; cleared at the end
        self.bufs: list[list[bytes]] = [[], []]
        self.buflen = [0, 0]
        self.nbytes = [0, 0]  # data bytes (markers excluded)
        self.gaps = [0, 0]
        self.gap_bytes = [0, 0]
        self.names: list[str | None] = [None, None]
        self.created = [False, False]
        self.suffix = 0  # 0: not chosen yet


class ContentsAnalyzer(Analyzer[_Conn]):
    """Writes both directions of every TCP connection to files (see module doc)."""

    name = "contents"
    wants_stream = True
    coalesce = True

    def __init__(self, outdir: str, **options: Any) -> None:
        self.config = cfg = ContentsConfig(outdir=outdir, **options)
        self.connections = 0
        self.files = 0
        self.bytes_written = 0
        self.gaps = 0
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._dirty: dict[_Conn, None] = {}
        self._buffered = 0
        self._iso_sec = -1
        self._iso_prefix = ""
        self._chunk = cfg.chunk_bytes
        self._cap = cfg.buffer_bytes
        try:
            os.makedirs(cfg.outdir, exist_ok=True)
            existing = sorted(n for n in os.listdir(cfg.outdir) if n.startswith(NAME_PREFIX))
        except OSError as exc:
            raise UsageError(
                f"{cfg.outdir}: cannot use as the output directory: {exc.strerror}"
            ) from None
        if existing:
            raise UsageError(
                f"{cfg.outdir} already holds contents output ({existing[0]}, ...): "
                "choose an empty or new directory"
            )
        try:
            self._dirfd = os.open(cfg.outdir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise UsageError(
                f"{cfg.outdir}: cannot use as the output directory: {exc.strerror}"
            ) from None
        self._summary: IO[str] | None = None
        if cfg.summary:
            try:
                fd = os.open(
                    SUMMARY_NAME,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS,
                    _FILE_MODE,
                    dir_fd=self._dirfd,
                )
            except OSError as exc:
                os.close(self._dirfd)
                raise UsageError(
                    f"{cfg.outdir}: cannot write {SUMMARY_NAME}: {exc.strerror}"
                ) from None
            self._summary = os.fdopen(fd, "w", encoding="utf-8")

    # ---- hooks -----------------------------------------------------------
    def on_flow_start(self, flow: Flow) -> _Conn | None:
        if flow.proto != PROTO_TCP:
            return None
        return _Conn(flow)

    def on_data(self, flow: Flow, state: _Conn, direction: int, data: bytes, ts_ns: int) -> None:
        n = len(data)
        state.nbytes[direction] += n
        buf = state.bufs[direction]
        if not buf and state not in self._dirty:
            self._dirty[state] = None
        buf.append(data)
        state.buflen[direction] += n
        self._buffered += n
        if state.buflen[direction] >= self._chunk:
            self._flush(state, direction)
        if self._buffered > self._cap:
            self._flush_all()

    def on_gap(self, flow: Flow, state: _Conn, direction: int, nbytes: int, ts_ns: int) -> None:
        state.gaps[direction] += 1
        state.gap_bytes[direction] += nbytes
        self.gaps += 1
        marker = GAP_MARKER % nbytes
        buf = state.bufs[direction]
        if not buf and state not in self._dirty:
            self._dirty[state] = None
        buf.append(marker)
        state.buflen[direction] += len(marker)
        self._buffered += len(marker)

    def on_roles_swapped(self, flow: Flow, state: _Conn) -> None:
        # File names follow the sender, not the role: only the indexes swap.
        for lst in (
            state.bufs,
            state.buflen,
            state.nbytes,
            state.gaps,
            state.gap_bytes,
            state.names,
            state.created,
        ):
            lst.reverse()

    def on_flow_end(self, flow: Flow, state: _Conn, reason: str) -> None:
        for d in (0, 1):
            if state.bufs[d]:
                self._flush(state, d)
            name = state.names[d]
            if name is not None:
                fd = self._fds.pop(name, None)
                if fd is not None:
                    os.close(fd)
        self._dirty.pop(state, None)
        state.flow = None
        self.connections += 1
        if self._summary is not None:
            self._summary.write(self._record_line(flow, state, reason))

    def finish(self) -> None:
        self.close()

    # ---- output ------------------------------------------------------------
    def _record(self, flow: Flow, st: _Conn, reason: str) -> dict[str, Any]:
        """The summary of one connection (one line of contents.jsonl)."""
        streams = flow.streams
        mid = [s.midstream for s in streams] if streams is not None else [False, False]
        return {
            "ts": round(flow.start_ns / 1e9, 6),
            "uid": flow.uid,
            "orig_h": flow.orig_h,
            "orig_p": flow.orig_p,
            "resp_h": flow.resp_h,
            "resp_p": flow.resp_p,
            "start": self._iso(flow.start_ns),
            "end": self._iso(flow.last_ns),
            "duration": round((flow.last_ns - flow.start_ns) / 1e9, 9),
            "orig_bytes": st.nbytes[0],
            "resp_bytes": st.nbytes[1],
            "orig_gaps": st.gaps[0],
            "resp_gaps": st.gaps[1],
            "orig_gap_bytes": st.gap_bytes[0],
            "resp_gap_bytes": st.gap_bytes[1],
            "orig_file": st.names[0] if st.created[0] else None,
            "resp_file": st.names[1] if st.created[1] else None,
            "orig_pkts": flow.pkts[0],
            "resp_pkts": flow.pkts[1],
            "orig_midstream": mid[0],
            "resp_midstream": mid[1],
            "roles": flow.role,
            "end_reason": reason,
        }

    def _record_line(self, flow: Flow, st: _Conn, reason: str) -> str:
        """:meth:`_record` as one JSON line, formatted directly (several times
        faster than ``json.dumps``; every string but ``roles`` is made of
        address, digit and name characters that need no escaping)."""
        streams = flow.streams
        m0, m1 = (streams[0].midstream, streams[1].midstream) if streams else (False, False)
        f0 = f'"{st.names[0]}"' if st.created[0] else "null"
        f1 = f'"{st.names[1]}"' if st.created[1] else "null"
        return (
            f'{{"ts": {round(flow.start_ns / 1e9, 6)!r}, "uid": "{flow.uid}",'
            f' "orig_h": "{flow.orig_h}", "orig_p": {flow.orig_p},'
            f' "resp_h": "{flow.resp_h}", "resp_p": {flow.resp_p},'
            f' "start": "{self._iso(flow.start_ns)}", "end": "{self._iso(flow.last_ns)}",'
            f' "duration": {round((flow.last_ns - flow.start_ns) / 1e9, 9)!r},'
            f' "orig_bytes": {st.nbytes[0]}, "resp_bytes": {st.nbytes[1]},'
            f' "orig_gaps": {st.gaps[0]}, "resp_gaps": {st.gaps[1]},'
            f' "orig_gap_bytes": {st.gap_bytes[0]}, "resp_gap_bytes": {st.gap_bytes[1]},'
            f' "orig_file": {f0}, "resp_file": {f1},'
            f' "orig_pkts": {flow.pkts[0]}, "resp_pkts": {flow.pkts[1]},'
            f' "orig_midstream": {"true" if m0 else "false"},'
            f' "resp_midstream": {"true" if m1 else "false"},'
            f' "roles": {json.dumps(flow.role)}, "end_reason": "{reason}"}}\n'
        )

    def _iso(self, ns: int) -> str:
        """ISO 8601 UTC with nine decimals (as ``bulk.summary.iso_ns``), cached per second."""
        sec, frac = divmod(ns, 1_000_000_000)
        if sec != self._iso_sec:
            self._iso_sec = sec
            self._iso_prefix = iso_ns(sec * 1_000_000_000)[:-11]  # type: ignore[index]
        return f"{self._iso_prefix}.{frac:09d}Z"

    def _set_names(self, st: _Conn, k: int) -> None:
        flow = st.flow
        assert flow is not None
        oh, rh = flow.orig_h, flow.resp_h
        op, rp = flow.orig_p, flow.resp_p
        st.suffix = k
        st.names = [stream_name(oh, op, rh, rp, k), stream_name(rh, rp, oh, op, k)]

    def _free_suffix(self, st: _Conn, start: int) -> int:
        """The first suffix >= ``start`` for which neither direction's file exists."""
        k = start
        while True:
            self._set_names(st, k)
            if not any(self._exists(n) for n in st.names if n is not None):
                return k
            k += 1

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _create(self, st: _Conn, d: int) -> int:
        """Create direction ``d``'s file, choosing the suffix on the first file.

        Files are created exclusively: an existing name means an earlier
        connection of this 4-tuple took that suffix, so the next free one is
        used (and the other direction's file, if already written, is renamed
        to match). Usually this costs one open() and no lookups.
        """
        if st.suffix == 0:
            self._set_names(st, 1)
        dirfd = self._dirfd
        while True:
            name = st.names[d]
            assert name is not None
            try:
                return os.open(name, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, _FILE_MODE, dir_fd=dirfd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise BulkError(
                    f"cannot create {self.config.outdir}/{name}: {exc.strerror}"
                ) from None
            other = st.names[d ^ 1]
            assert other is not None
            if not st.created[d ^ 1]:
                self._free_suffix(st, st.suffix + 1)
                continue
            # The other direction already has a file under this suffix: move it.
            fd = self._fds.pop(other, None)
            if fd is not None:
                os.close(fd)
            self._free_suffix(st, st.suffix + 1)
            moved = st.names[d ^ 1]
            assert moved is not None
            os.rename(other, moved, src_dir_fd=dirfd, dst_dir_fd=dirfd)

    def _fd(self, st: _Conn, d: int) -> int:
        name = st.names[d]
        fds = self._fds
        if name is not None:
            fd = fds.get(name)
            if fd is not None:
                fds.move_to_end(name)
                return fd
        if not st.created[d]:
            fd = self._create(st, d)
            st.created[d] = True
            self.files += 1
            name = st.names[d]
            assert name is not None
        else:
            assert name is not None
            try:
                fd = os.open(name, _OPEN_FLAGS | os.O_CREAT, _FILE_MODE, dir_fd=self._dirfd)
            except OSError as exc:
                raise BulkError(
                    f"cannot reopen {self.config.outdir}/{name}: {exc.strerror}"
                ) from None
        fds[name] = fd
        while len(fds) > self.config.max_open_files:
            _, old = fds.popitem(last=False)
            os.close(old)
        return fd

    def _flush(self, st: _Conn, d: int) -> None:
        chunks = st.bufs[d]
        if not chunks:
            return
        fd = self._fd(st, d)
        total = st.buflen[d]
        try:
            if len(chunks) <= _IOV_MAX:
                written = os.writev(fd, chunks)
            else:
                written = os.write(fd, b"".join(chunks))
            if written < total:
                rest = b"".join(chunks)[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        except OSError as exc:
            raise BulkError(
                f"cannot write {self.config.outdir}/{st.names[d]}: {exc.strerror}"
            ) from None
        self.bytes_written += total
        self._buffered -= total
        st.bufs[d] = []
        st.buflen[d] = 0
        if not st.bufs[d ^ 1]:
            self._dirty.pop(st, None)

    def _flush_all(self) -> None:
        for st in list(self._dirty):
            for d in (0, 1):
                if st.bufs[d]:
                    self._flush(st, d)

    def close(self) -> None:
        """Write what is buffered, close every file and the summary."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._summary is not None:
            self._summary.close()
            self._summary = None
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1
