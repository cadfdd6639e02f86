"""The subcommands, registered explicitly: each name is a module of this package.

A command module exposes NAME, HELP (one line), DESCRIPTION (teaching text with
examples), ``add_arguments(parser)`` and ``run(args) -> int``. Commands are thin
wiring of sources, filters and sinks; their logic lives in library modules.
"""

from __future__ import annotations

COMMANDS: tuple[str, ...] = (
    "info",
    "contents",
    "backdoor",
    "slice",
    "compress",
    "capture",
    "rotate",
    "status",
    "index",
    "extract",
)
