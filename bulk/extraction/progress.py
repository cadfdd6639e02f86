"""A one-line progress display on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_INTERVAL_S = 0.25


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - loop returns


class Progress:
    """``files done/total  bytes read/total  rate  packets written``; silent off a terminal."""

    def __init__(self, files: int, total_bytes: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.files = files
        self.total_bytes = total_bytes
        self.t0 = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def update(
        self, files_done: int, bytes_done: int, packets: int | None, force: bool = False
    ) -> None:
        """``packets``: None when libpcap writes them (not counted)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < _INTERVAL_S:
            return
        self._last = now
        rate = bytes_done / max(now - self.t0, 1e-6)
        line = (
            f"bulk extract: {files_done}/{self.files} files  "
            f"{_size(bytes_done)}/{_size(self.total_bytes)}  {_size(rate)}/s"
        )
        if packets is not None:
            line += f"  {packets:,} packets written"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
