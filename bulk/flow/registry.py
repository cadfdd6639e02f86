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
    "contents": "bulk.analyzers.contents:ContentsAnalyzer",
}


def create(name: str, **options: Any) -> Analyzer[Any]:
    """Instantiate the analyzer registered as ``name`` with ``options``."""
    try:
        target = ANALYZERS[name]
    except KeyError:
        known = ", ".join(sorted(ANALYZERS))
        raise ValueError(f"unknown analyzer {name!r} (known: {known})") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    analyzer = cls(**options)
    if not isinstance(analyzer, Analyzer):
        raise TypeError(f"{target} is not an Analyzer")
    return analyzer
