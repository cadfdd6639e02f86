"""The explicit registry of flow analyzers.

One line per analyzer: registry name -> ``"module:Class"``. Modules are
imported only when an analyzer is created, so listing them costs nothing.
Commands create analyzers by name and pass them, in order, to one
:class:`bulk.flow.table.FlowTable`; analyzers that may re-decide roles
(``backdoor``) must come before analyzers that write output (``contents``).
"""

from __future__ import annotations

import importlib
from typing import Any

from bulk.flow.analyzer import Analyzer

ANALYZERS: dict[str, str] = {
    "backdoor": "bulk.analyzers.backdoor:BackdoorAnalyzer",
    "contents": "bulk.analyzers.contents:ContentsAnalyzer",
}


def resolve(name: str) -> type[Analyzer[Any]]:
    """The analyzer class registered as ``name`` (imports its module)."""
    try:
        target = ANALYZERS[name]
    except KeyError:
        known = ", ".join(sorted(ANALYZERS))
        raise ValueError(f"unknown analyzer {name!r} (known: {known})") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Analyzer)):
        raise TypeError(f"{target} is not an Analyzer")
    return cls


def create(name: str, **options: Any) -> Analyzer[Any]:
    """Instantiate the analyzer registered as ``name`` with ``options``."""
    return resolve(name)(**options)
