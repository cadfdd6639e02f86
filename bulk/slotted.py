"""Record classes without ``dataclasses``: its import (with ``inspect``) costs
about 7 ms of the start-up of every command that would use it.

A subclass lists its fields in ``__slots__`` and sets them in ``__init__``;
:class:`Slotted` gives it equality by value (same class, same fields) and a
``Name(field=value, ...)`` repr, and leaves it unhashable, as a mutable
dataclass is. :class:`Frozen` also refuses assignment after ``__init__`` (which
sets its fields with ``object.__setattr__``) and hashes by value, as a frozen
dataclass does.
"""

from __future__ import annotations

from typing import Any


class Slotted:
    __slots__ = ()

    def _fields(self) -> tuple[str, ...]:
        names: tuple[str, ...] = self.__slots__  # the subclass's
        return names

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields())

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Slotted)
            and type(other) is type(self)
            and (self._values() == other._values())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, as a dataclass

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields())
        return f"{type(self).__name__}({fields})"


class Frozen(Slotted):
    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __hash__(self) -> int:  # type: ignore[override]  # None in Slotted
        return hash(self._values())
