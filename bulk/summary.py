"""Summaries of traces (what ``bulk info`` prints): capinfos-like figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from bulk.errors import TraceError, TruncatedTrace
from bulk.trace import linktype_name, open_trace


@dataclass
class TraceSummary:
    path: str
    format: str = ""
    compression: str | None = None
    linktypes: list[int] = field(default_factory=list)
    nanosecond: bool = False
    snaplen: int = 0
    packets: int = 0
    captured_bytes: int = 0
    wire_bytes: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    min_ns: int | None = None
    max_ns: int | None = None
    time_ordered: bool = True
    truncated: bool = False
    error: str | None = None

    @property
    def duration_ns(self) -> int:
        if self.min_ns is None or self.max_ns is None:
            return 0
        return self.max_ns - self.min_ns

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["linktype_names"] = [linktype_name(lt) for lt in self.linktypes]
        out["first_time"] = iso_ns(self.first_ns)
        out["last_time"] = iso_ns(self.last_ns)
        out["duration_s"] = self.duration_ns / 1e9
        secs = self.duration_ns / 1e9
        out["packets_per_s"] = self.packets / secs if secs > 0 else None
        out["bytes_per_s"] = self.captured_bytes / secs if secs > 0 else None
        out["avg_packet_bytes"] = self.captured_bytes / self.packets if self.packets else None
        return out


def iso_ns(ns: int | None) -> str | None:
    """An epoch-nanosecond time as ISO 8601 UTC with nine decimals."""
    if ns is None:
        return None
    sec, frac = divmod(ns, 1_000_000_000)
    try:
        stamp = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (ValueError, OverflowError, OSError):
        # Beyond year 9999 (a damaged trace's times): the epoch seconds instead.
        return f"{sec}.{frac:09d}"
    return f"{stamp}.{frac:09d}Z"


def summarize(path: str) -> TraceSummary:
    """Read a whole trace. A truncated or corrupt tail is noted, not raised;
    a file that is not a trace at all raises TraceError."""
    s = TraceSummary(path)
    with open_trace(path) as reader:
        s.format = reader.format
        s.compression = reader.compression
        s.nanosecond = reader.nanosecond
        s.snaplen = reader.snaplen
        packets = 0
        cap = 0
        wire = 0
        first = last = lo = hi = None
        prev = -1
        ordered = True
        try:
            for pkt in reader:
                ts = pkt.ts_ns
                if first is None:
                    first = lo = hi = ts
                elif ts < prev:
                    ordered = False
                if lo is not None and ts < lo:
                    lo = ts
                if hi is not None and ts > hi:
                    hi = ts
                prev = ts
                packets += 1
                cap += len(pkt.data)
                wire += pkt.wirelen
            last = prev if packets else None
        except TruncatedTrace as exc:
            s.truncated = True
            s.error = exc.reason + (f" (byte {exc.offset})" if exc.offset is not None else "")
            last = prev if packets else None
        except TraceError as exc:
            s.error = exc.reason + (f" (byte {exc.offset})" if exc.offset is not None else "")
            last = prev if packets else None
        s.linktypes = list(reader.linktypes)
        s.nanosecond = reader.nanosecond
    s.packets, s.captured_bytes, s.wire_bytes = packets, cap, wire
    s.first_ns, s.last_ns, s.min_ns, s.max_ns = first, last, lo, hi
    s.time_ordered = ordered
    return s
