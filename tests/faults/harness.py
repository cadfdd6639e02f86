"""Shared pieces of the fault and abuse suites: the long/short switch, a per-example
deadline, and the in-process command line.

Short form (CI, the default): about 300 examples per fuzz target, the fault
scenarios at their CI size. Long form: ``BULK_LONG=1`` (or
``BULK_HYPOTHESIS=long``) multiplies the examples (>= 10,000 in total) and
runs the ``slow`` tests; see docs/testing.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

import pytest

LONG = (
    os.environ.get("BULK_LONG", "") not in ("", "0") or os.environ.get("BULK_HYPOTHESIS") == "long"
)

long_only = pytest.mark.skipif(not LONG, reason="long form only: BULK_LONG=1")


def examples(short: int, long: int | None = None) -> int:
    """Examples per fuzz target: ``short`` in CI, ``long`` (default 8x) on demand.
    BULK_FUZZ_EXAMPLES overrides both (e.g. a quick local run)."""
    forced = os.environ.get("BULK_FUZZ_EXAMPLES")
    if forced:
        return int(forced)
    return (long if long is not None else 8 * short) if LONG else short


class Hang(BaseException):
    """An example ran past its deadline (not an Exception: `except Exception` must not eat it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise Hang in the main thread when the block runs longer than ``seconds``.

    A real interval timer: a Python-level endless loop is interrupted; a loop
    inside C (libpcap) is not, and is then caught by pytest-timeout.
    """

    def fire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass(frozen=True)
class CliResult:
    status: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def run_cli(argv: Sequence[str], seconds: float = 20.0) -> CliResult:
    """``bulk ARGV`` in this process (what the console script runs), its output
    captured. A traceback cannot hide: only BulkError is turned into a line by
    bulk.cli, anything else propagates to the test."""
    from bulk.cli import main  # noqa: PLC0415

    out, err = io.StringIO(), io.StringIO()
    with deadline(seconds), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse
            status = int(exc.code or 0)
    return CliResult(status, out.getvalue(), err.getvalue())


def assert_clean_cli(result: CliResult, command: str, allowed: Sequence[int] = (0, 2, 3)) -> None:
    """Exit in ``allowed``; a failure is one line naming the command; never a traceback."""
    assert result.status in allowed, (result.status, result.stderr)
    assert "Traceback" not in result.stderr
    if result.status != 0:
        lines = result.stderr_lines
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"bulk {command}: "), lines[0]


def rss_bytes() -> int:
    import psutil  # noqa: PLC0415

    return int(psutil.Process().memory_info().rss)


def python() -> str:
    return sys.executable
