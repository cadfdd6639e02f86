"""Find trace files: named files, or every trace in a directory (in name order)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from bulk.errors import UsageError

# Names that hold traces, compressed or not. The open file of a capture ends in
# ".pcap.open" and is included only when asked for.
TRACE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcap.zst", ".pcapng.gz", ".pcapng.zst")
OPEN_SUFFIX = ".open"
PCAP_HEADER_BYTES = 24


def is_trace_name(name: str, include_open: bool = False) -> bool:
    if include_open and name.endswith(OPEN_SUFFIX):
        name = name[: -len(OPEN_SUFFIX)]
    return name.endswith(TRACE_SUFFIXES) and not name.startswith(".")


def traces_in_dir(
    directory: str, include_open: bool = False, with_empty_open: bool = False
) -> list[str]:
    """The trace files of a directory tree, sorted by path (archive names sort by time).

    An open file too short to hold even its pcap header (the capture has just
    opened it) is left out unless ``with_empty_open``: readers would fail on it.
    """
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: not a directory")
    found: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not is_trace_name(name, include_open):
                continue
            path = os.path.join(root, name)
            if name.endswith(OPEN_SUFFIX) and not with_empty_open and not _holds_header(path):
                # Just opened by the capture: libpcap has not written even the
                # file header yet. It holds no packet; reading it would fail.
                continue
            found.append(path)
    return found


def _holds_header(path: str) -> bool:
    try:
        return os.path.getsize(path) >= PCAP_HEADER_BYTES
    except OSError:
        return False


def expand_inputs(items: Iterable[str], include_open: bool = False) -> list[str]:
    """Files as given; directories expanded to the traces they hold."""
    paths: list[str] = []
    for item in items:
        if item != "-" and os.path.isdir(item):
            paths.extend(traces_in_dir(item, include_open))
        else:
            paths.append(item)
    return paths
