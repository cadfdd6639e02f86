"""Helpers shared by the benchmarks that time bulk's commands as child processes.

Imported as ``common`` (the benchmarks run as ``python bench/NAME.py``, so
bench/ is first on the path).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def child_env() -> dict[str, str]:
    """The environment for timed children: bulk runs as installed code would,
    with compiled bytecode (this repository's environment sets
    PYTHONDONTWRITEBYTECODE), cached under bench/out/pycache."""
    e = dict(os.environ)
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    e["PYTHONPYCACHEPREFIX"] = str(OUT / "pycache")
    return e


def installed_bulk() -> list[str]:
    """The ``bulk`` command installed as the sensor role installs it: from a wheel
    of this tree (C accelerators built, bytecode compiled by pip), not editable,
    in its own virtualenv under bench/out/venv (refreshed at every call: a few
    seconds). Its dependencies are this environment's, through a ``.pth``.

    The development install is editable: its import hook (setuptools' finder,
    loaded by a ``.pth`` at every interpreter start) costs some 15 ms per command,
    which an installed bulk does not pay."""
    venv = OUT / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (purelib / "bench-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--force-reinstall",
            "--no-warn-script-location",
            str(ROOT),
        ],
        check=True,
    )
    return [str(venv / "bin" / "bulk")]


def installed_env() -> dict[str, str]:
    """The environment for :func:`installed_bulk`: bytecode where pip put it."""
    e = dict(os.environ)
    for var in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONPATH"):
        e.pop(var, None)
    return e


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by this process's waited-for children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(
    cmd: Sequence[str] | str, env: dict[str, str] | None = None
) -> tuple[float, float, bytes]:
    """Wall time, CPU time (children included) and stderr of one run of ``cmd``
    in ``env`` (default :func:`child_env`); a string is a shell command. A
    failed run ends the benchmark."""
    t, c = time.perf_counter(), children_cpu()
    proc = subprocess.run(
        cmd,
        shell=isinstance(cmd, str),
        env=child_env() if env is None else env,
        capture_output=True,
        check=False,
    )
    wall, cpu = time.perf_counter() - t, children_cpu() - c
    if proc.returncode != 0:
        raise SystemExit(f"{cmd!r} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return wall, cpu, proc.stderr
