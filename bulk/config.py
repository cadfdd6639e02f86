"""Site configuration: ``/etc/bulk/bulk.toml`` defaults under the command line.

The file is optional. Its top-level ``dir`` names the archive directory; each
command reads its own table (``[capture]``, ``[compress]``, ...) whose keys are
the command's long option names with ``_`` for ``-`` (``rotate_seconds``).
The command line always wins over the file, and the file over built-in
defaults. ``BULK_CONFIG`` names another file (``BULK_CONFIG=`` disables it).

Also here: the size and duration grammars every command shares
(``64M``, ``1.5GiB``, ``500MB``; ``90s``, ``30m``, ``2h``, ``7d``; a bare number is
bytes or seconds).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bulk.errors import UsageError
from bulk.timespec import parse_duration_ns

DEFAULT_CONFIG = "/etc/bulk/bulk.toml"
DEFAULT_DIR = "/srv/bulk/traces"
CONFIG_ENV = "BULK_CONFIG"


@dataclass(frozen=True)
class Config:
    """A parsed configuration file (or none: ``path`` is None, ``data`` empty)."""

    path: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> Mapping[str, Any]:
        """The table ``[name]``, or an empty mapping."""
        value = self.data.get(name, {})
        if not isinstance(value, Mapping):
            raise UsageError(f"{self.path}: [{name}] must be a table")
        return value

    def get(self, section: str, key: str, default: Any = None) -> Any:
        """``[section] key``, falling back to the top-level ``key``, then ``default``."""
        table = self.section(section)
        if key in table:
            return table[key]
        return self.data.get(key, default)

    def pick(self, cli_value: Any, section: str, key: str, default: Any = None) -> Any:
        """The command line's value when given (not None), else the file's, else default."""
        if cli_value is not None:
            return cli_value
        return self.get(section, key, default)

    def archive_dir(self, cli_dir: str | None) -> str:
        """The archive directory: ``--dir``, else ``dir`` in the file, else the default."""
        value = cli_dir if cli_dir is not None else self.data.get("dir", DEFAULT_DIR)
        if not isinstance(value, str) or not value:
            raise UsageError(f"{self.path}: 'dir' must be a non-empty string")
        return value


def load_config(path: str | None = None) -> Config:
    """Read the configuration file: ``path``, else ``$BULK_CONFIG``, else the default.

    A missing default file is no configuration; a missing file that was asked
    for, or one that is not valid TOML, is a UsageError naming the file.
    """
    explicit = path is not None
    if path is None:
        env = os.environ.get(CONFIG_ENV)
        if env is not None:
            if env == "":
                return Config()
            path, explicit = env, True
        else:
            path = DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"{path}: configuration file not found") from None
        return Config()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read configuration: {exc.strerror}") from None
    # Only when there is a file: tomllib imports datetime and compiles its
    # regexes, ~5 ms of every command's start.
    import tomllib  # noqa: PLC0415

    try:
        data = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    return Config(path, data)


_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes from ``1000``, ``64K``, ``100M``, ``1.5G``, ``64MiB``, ``500MB``.

    As in dd, df and ls -h, K/M/G/T (and KiB..TiB) are powers of 1024; KB/MB/GB/TB
    are powers of 1000; B or no unit is bytes. Case does not matter.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"bad {what} {text}: must not be negative")
        return text
    m = _NUMBER_UNIT.match(str(text))
    unit = m.group(2).lower() if m else ""
    base, power = 1024, None
    if unit in ("", "b"):
        power = 0
    elif unit[:1] in _SIZE_POWERS and unit[1:] in ("", "ib"):
        power = _SIZE_POWERS[unit[:1]]
    elif unit[:1] in _SIZE_POWERS and unit[1:] == "b":
        base, power = 1000, _SIZE_POWERS[unit[:1]]
    if m is None or power is None:
        raise UsageError(
            f"bad {what} {text!r}: expected a number with an optional unit "
            "(K, M, G, T are powers of 1024; KB, MB, GB, TB of 1000)"
        )
    return int(float(m.group(1)) * base**power)


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``1h30m`` (a bare
    number is seconds): the one duration grammar of :mod:`bulk.timespec`, plus numbers
    from the TOML config."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"bad {what} {text}: must not be negative")
        return float(text)
    return parse_duration_ns(str(text), what=f"{what} {text!r}") / 1_000_000_000
