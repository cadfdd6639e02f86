"""Standard ports per service: the defaults (package data) and operator overrides.

File format (``bulk/data/standard_ports.conf`` is the default)::

    # comment
    ssh    22
    http   80, 8008 8080      # ports and LO-HI ranges, space or comma separated

Services may repeat; their ports add up. An operator file replaces the
defaults of the services it names and keeps the others; ``--standard
SERVICE=PORT,...`` replaces one service (an empty list makes every port
non-standard for it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from bulk.errors import UsageError
from bulk.slotted import Frozen

_SERVICE = re.compile(r"[a-z][a-z0-9_.+-]*$")


def _parse_ports(text: str, where: str) -> frozenset[int]:
    ports: set[int] = set()
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        lo_s, sep, hi_s = item.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise UsageError(f"{where}: bad port {item!r}") from None
        if not (0 < lo <= hi <= 65535):
            raise UsageError(f"{where}: port out of range {item!r}")
        ports.update(range(lo, hi + 1))
    return frozenset(ports)


def parse_ports_file(text: str, name: str = "<ports>") -> dict[str, frozenset[int]]:
    """Parse the file format above into service -> ports."""
    table: dict[str, set[int]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        service, _, rest = line.partition(" ")
        service = service.strip().lower()
        if not _SERVICE.match(service):
            raise UsageError(f"{name}:{lineno}: bad service name {service!r}")
        ports = _parse_ports(rest, f"{name}:{lineno}")
        if not ports:
            raise UsageError(f"{name}:{lineno}: no ports for {service}")
        table.setdefault(service, set()).update(ports)
    return {k: frozenset(v) for k, v in table.items()}


def parse_standard_option(value: str) -> tuple[str, frozenset[int]]:
    """``SERVICE=PORT[,PORT|LO-HI...]`` as given to --standard."""
    service, sep, ports = value.partition("=")
    service = service.strip().lower()
    if not sep or not _SERVICE.match(service):
        raise UsageError(f"--standard {value!r}: expected SERVICE=PORT,... (e.g. ssh=22,2222)")
    return service, _parse_ports(ports, f"--standard {service}")


_DEFAULTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "standard_ports.conf")


class StandardPorts(Frozen):
    """service -> the ports where that service is expected (immutable).

    (A plain class, not a dataclass: ``dataclasses`` imports ``inspect``, about
    7 ms of every ``bulk backdoor`` start-up.)"""

    __slots__ = ("table",)
    table: Mapping[str, frozenset[int]]

    def __init__(self, table: Mapping[str, frozenset[int]]) -> None:
        object.__setattr__(self, "table", table)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StandardPorts) and dict(self.table) == dict(other.table)

    __hash__ = None  # type: ignore[assignment]  # as the dataclass (its mapping is not hashable)

    @classmethod
    def default(cls) -> StandardPorts:
        # Beside the package's modules, read directly: importlib.resources
        # costs about 8 ms of start-up (zipfile, threading) for one small file.
        with open(_DEFAULTS, encoding="utf-8") as fh:
            text = fh.read()
        return cls(MappingProxyType(parse_ports_file(text, "standard_ports.conf")))

    @classmethod
    def load(
        cls,
        ports_file: str | None = None,
        overrides: Iterable[str] = (),
    ) -> StandardPorts:
        """The defaults, then an operator file, then --standard options."""
        table = dict(cls.default().table)
        if ports_file is not None:
            try:
                with open(ports_file, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as exc:
                raise UsageError(f"--ports {ports_file}: {exc.strerror}") from None
            table.update(parse_ports_file(text, ports_file))
        for value in overrides:
            service, ports = parse_standard_option(value)
            table[service] = ports
        return cls(MappingProxyType(table))

    def is_standard(self, service: str, port: int) -> bool:
        return port in self.table.get(service, frozenset())

    def ports(self, service: str) -> frozenset[int]:
        return self.table.get(service, frozenset())
