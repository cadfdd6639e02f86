"""The error hierarchy and the exit statuses every command shares.

A user mistake or bad input raises one of these; ``bulk.cli`` turns it into one
line on stderr and the exit status below. Nothing else reaches the user.
"""

from __future__ import annotations

# Exit statuses (documented in docs/cli.md and in ``bulk --help``).
EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure (capture died, disk full, ...)
EXIT_BAD_INPUT = 2  # unreadable or corrupt input, bad filter, bad time spec, bad usage
EXIT_TRUNCATED = 3  # input ended mid-record: every whole packet was delivered
EXIT_INTERRUPTED = 130


class BulkError(Exception):
    """Base class: a failure that is explained to the user in one line."""

    exit_status = EXIT_FAILURE


class UsageError(BulkError):
    """Wrong arguments, wrong time spec, bad filter."""

    exit_status = EXIT_BAD_INPUT


class TraceError(BulkError):
    """A trace cannot be read (not a trace, corrupt)."""

    exit_status = EXIT_BAD_INPUT

    def __init__(self, path: str, offset: int | None, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{path}{where}: {reason}")


class TruncatedTrace(TraceError):
    """The trace ends in the middle of a record; all whole packets were read."""

    exit_status = EXIT_TRUNCATED


class Vanished(TraceError):
    """A trace listed in an archive and deleted (by retention) before it was read.

    Readers of an archive skip it: whoever raises it has reported it as a warning
    (bulk.archive.members).
    """

    exit_status = EXIT_OK


class FilterError(UsageError):
    """libpcap rejected a BPF expression."""


class CaptureError(BulkError):
    """Live capture could not start or failed."""


class ArchiveError(BulkError):
    """The archive directory or catalogue is unusable."""
