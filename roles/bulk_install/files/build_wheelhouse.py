#!/usr/bin/env python3
"""Build the wheelhouse that bulk_install ships to sensors (runs on the controller).

    build_wheelhouse.py --source REPO --wheelhouse DIR

Runs ``pip wheel`` for the project and all its dependencies (plus setuptools and
wheel, so that later builds work offline) into a scratch directory, then syncs
the result into DIR: files whose bytes changed are replaced, stale ones removed.
The project wheel is built with a fixed SOURCE_DATE_EPOCH, so an unchanged
source tree yields a byte-identical wheel and the sync changes nothing.

A first attempt is offline (``--no-index --find-links DIR``); only if that
fails is the package index asked. Prints one JSON object on stdout:
``{"changed": bool, "bulk_version": str, "bulk_wheel": str, "python": "3.11",
"machine": "x86_64", "files": [...]}``; the same data (less "changed") is
written to DIR/manifest.json, which the role reads to pin the version and to
check that the sensor's Python and architecture match the wheels.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

# 1980-01-01: the earliest timestamp a zip archive can hold.
SOURCE_DATE_EPOCH = "315532800"
MANIFEST = "manifest.json"
BUILD_REQUIREMENTS = ("setuptools>=68", "wheel")


def pip_wheel(
    source: Path, out: Path, wheelhouse: Path, offline: bool
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    cmd += ["--wheel-dir", str(out)]
    if offline:
        cmd += ["--no-index", "--find-links", str(wheelhouse)]
    cmd += [str(source), *BUILD_REQUIREMENTS]
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PYTHONHASHSEED="0")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


def sync(built: Path, wheelhouse: Path) -> bool:
    changed = False
    wheelhouse.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in built.glob("*.whl")}
    for old in wheelhouse.glob("*.whl"):
        if old.name not in wanted:
            old.unlink()
            changed = True
    for new in sorted(built.glob("*.whl")):
        dest = wheelhouse / new.name
        if dest.exists() and filecmp.cmp(new, dest, shallow=False):
            continue
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(new, tmp)
        tmp.replace(dest)
        changed = True
    return changed


def project_name(source: Path) -> str:
    with (source / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="project directory (pyproject.toml)"
    )
    parser.add_argument("--wheelhouse", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    source = args.source.resolve()
    wheelhouse = args.wheelhouse.resolve()
    name = project_name(source).replace("-", "_")

    with tempfile.TemporaryDirectory(prefix="bulk-wheelhouse-") as tmp:
        built = Path(tmp)
        proc = pip_wheel(source, built, wheelhouse, offline=True) if wheelhouse.is_dir() else None
        if proc is None or proc.returncode != 0:
            for stale in built.glob("*"):
                stale.unlink()
            proc = pip_wheel(source, built, wheelhouse, offline=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            sys.stderr.write(f"build_wheelhouse: pip wheel failed (exit {proc.returncode})\n")
            return 1
        wheels = sorted(p.name for p in built.glob("*.whl"))
        own = [w for w in wheels if w.startswith(name + "-")]
        if len(own) != 1:
            sys.stderr.write(f"build_wheelhouse: expected one {name} wheel, got {own}\n")
            return 1
        changed = sync(built, wheelhouse)

    manifest = {
        "bulk_version": own[0].split("-")[1],
        "bulk_wheel": own[0],
        "python": "{}.{}".format(*sys.version_info[:2]),
        "machine": platform.machine(),
        "files": wheels,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    path = wheelhouse / MANIFEST
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        changed = True
    print(json.dumps({"changed": changed, **manifest}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
