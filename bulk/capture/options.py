"""The options of one capture: the command line over ``[capture]`` in bulk.toml over defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bulk.config import Config, parse_duration, parse_size
from bulk.errors import UsageError

SECTION = "capture"

DEFAULT_SNAPLEN = 262144
DEFAULT_BUFFER = 32 << 20  # the kernel ring per worker; RSS stays under 100 MB
DEFAULT_TIMEOUT_MS = 100  # a TPACKET_V3 block is handed over at least this often
DEFAULT_STATE_INTERVAL = 2.0
MAX_WORKERS = 64
ENGINES = ("auto", "libpcap", "pcapy")


@dataclass(frozen=True)
class CaptureOptions:
    interface: str
    directory: str
    rotate_seconds: float | None = None
    rotate_bytes: int | None = None
    align: bool = False
    snaplen: int = DEFAULT_SNAPLEN
    buffer_size: int = DEFAULT_BUFFER
    promisc: bool = True
    bpf: str | None = None
    workers: int = 1
    index: bool = True
    engine: str = "auto"
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    state_interval: float = DEFAULT_STATE_INTERVAL

    def check(self) -> None:
        """Refuse values that cannot work, with one line naming the option."""
        if not self.interface:
            raise UsageError("no interface: give -i IFACE or [capture] interface in bulk.toml")
        if self.rotate_seconds is not None and self.rotate_seconds <= 0:
            raise UsageError("--rotate-seconds must be more than 0")
        if self.rotate_bytes is not None and self.rotate_bytes <= 0:
            raise UsageError("--rotate-bytes must be more than 0")
        if self.align and self.rotate_seconds is None:
            raise UsageError("--align needs --rotate-seconds")
        if not 1 <= self.snaplen <= DEFAULT_SNAPLEN:
            raise UsageError(f"--snaplen must be between 1 and {DEFAULT_SNAPLEN}")
        if self.buffer_size < 1 << 16:
            raise UsageError("--buffer must be at least 64K")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}")
        if self.engine not in ENGINES:
            raise UsageError(f"--engine must be one of {', '.join(ENGINES)}")


def resolve_options(cli: Mapping[str, Any], config: Config) -> CaptureOptions:
    """Options from the command line (None = not given) over ``[capture]`` over defaults.

    ``cli`` keys: interface, dir, rotate_seconds, rotate_bytes, align, snaplen,
    buffer, filter, workers, promisc, index, engine (the option names, as in bulk.toml).
    """

    def pick(key: str, default: Any = None) -> Any:
        return config.pick(cli.get(key), SECTION, key, default)

    rotate_seconds = pick("rotate_seconds")
    rotate_bytes = pick("rotate_bytes")
    bpf = pick("filter")
    opts = CaptureOptions(
        interface=str(pick("interface", "") or ""),
        directory=config.archive_dir(cli.get("dir")),
        rotate_seconds=(
            None if rotate_seconds is None else parse_duration(rotate_seconds, "rotate-seconds")
        ),
        rotate_bytes=None if rotate_bytes is None else parse_size(rotate_bytes, "rotate-bytes"),
        align=bool(pick("align", False)),
        snaplen=_int(pick("snaplen", DEFAULT_SNAPLEN), "snaplen"),
        buffer_size=parse_size(pick("buffer", DEFAULT_BUFFER), "buffer"),
        promisc=bool(pick("promisc", True)),
        bpf=str(bpf) if bpf else None,
        workers=_int(pick("workers", 1), "workers"),
        index=bool(pick("index", True)),
        engine=str(pick("engine", "auto")),
    )
    opts.check()
    return opts


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"bad {what} {value!r}: expected a whole number") from None
