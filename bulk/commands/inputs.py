"""The input traces of a reading command: files as given, then archive directories.

Not a command itself (see COMMANDS). Light on purpose: ``bulk slice`` of a
plain pcap imports this and must not load the archive package.
"""

from __future__ import annotations

import os

from bulk.errors import UsageError


def gather_inputs(
    files: list[str], dirs: list[str], *, include_open: bool, how: str
) -> tuple[list[str], set[str]]:
    """Every input path (``files``, then the traces of each directory in ``dirs``)
    and the set of those listed from a directory (an archive, whose traces may
    move or go while they are read). UsageError when there is none (``how``
    says how to give some), when standard input is named twice, or when a
    directory is named as a file."""
    paths = list(files)
    listed: set[str] = set()
    if dirs:
        from bulk.archive.listing import traces_in_dir  # noqa: PLC0415 - archives only

        for directory in dirs:
            found = traces_in_dir(directory, include_open=include_open)
            paths.extend(found)
            listed.update(found)
    if not paths:
        if dirs:
            raise UsageError("no trace files in " + ", ".join(dirs))
        raise UsageError(f"no input: {how}")
    if paths.count("-") > 1:
        raise UsageError("standard input can be given only once")
    for p in paths:
        if p != "-" and os.path.isdir(p):
            raise UsageError(f"{p} is a directory: use --dir {p}")
    return paths, listed
