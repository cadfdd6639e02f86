"""Which modules a bulk command leaves loaded: the evidence of the start-up
tests (tests/unit/test_*_imports.py), which time nothing."""

from __future__ import annotations

import subprocess
import sys

PROBE = """\
import sys
from bulk.cli import main
status = main(sys.argv[1:])
print(status, *sorted(sys.modules))
"""


def loaded_modules(*argv: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """``bulk ARGV...`` run in a fresh interpreter: its exit status and the names in
    ``sys.modules`` at its end. The command must write nothing to stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=False, env=env
    )
    assert proc.stderr == ""
    status, *modules = proc.stdout.splitlines()[-1].split()
    return int(status), modules
