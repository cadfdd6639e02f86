#!/usr/bin/env python3
"""Build the wheelhouse that bulk_install ships to sensors (runs on the controller).

    build_wheelhouse.py --source REPO --wheelhouse DIR [--ref GIT_REF]

``pip wheel`` builds the project and its runtime dependencies, and separately
the build tools (setuptools, wheel) so that later builds work offline. Both
are synced into DIR: files whose bytes changed are replaced, stale ones
removed. The runtime wheels and a manifest are then packed into
DIR/bulk-wheelhouse.tar, the one file the role copies to a sensor.

Everything is reproducible: the project wheel is built with a fixed
SOURCE_DATE_EPOCH and the tar has fixed order, times and owners, so an
unchanged source tree yields byte-identical files and changes nothing.

With --ref, the project is built from that commit (``git archive``) rather
than from the working tree, so uncommitted edits are not shipped.

The first attempt is offline (``--no-index --find-links DIR``); only if that
fails is the package index asked. Prints one JSON object on stdout:
``{"changed": bool, "bulk_version": str, "bulk_wheel": str, "python": "3.11",
"machine": "x86_64", "files": [runtime wheels]}``; the same data (less
"changed") is DIR/manifest.json, which the role reads to pin the version and
to check that the sensor's Python and architecture match the wheels.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

# 1980-01-01: the earliest timestamp a zip archive can hold.
SOURCE_DATE_EPOCH = 315532800
MANIFEST = "manifest.json"
ARCHIVE = "bulk-wheelhouse.tar"
BUILD_REQUIREMENTS = ("setuptools>=68", "wheel")


def pip_wheel(
    requirements: list[str], out: Path, wheelhouse: Path
) -> subprocess.CompletedProcess[str]:
    """``pip wheel`` offline from the wheelhouse, else from the package index."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH), PYTHONHASHSEED="0")
    base = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
    base += ["--wheel-dir", str(out)]
    proc = None
    if wheelhouse.is_dir():
        offline = [*base, "--no-index", "--find-links", str(wheelhouse), *requirements]
        proc = subprocess.run(offline, env=env, capture_output=True, text=True, check=False)
    if proc is None or proc.returncode != 0:
        for stale in out.glob("*"):
            stale.unlink()
        proc = subprocess.run(
            [*base, *requirements], env=env, capture_output=True, text=True, check=False
        )
    return proc


def sync(built: list[Path], wheelhouse: Path) -> bool:
    changed = False
    wheelhouse.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in built}
    for old in wheelhouse.glob("*.whl"):
        if old.name not in wanted:
            old.unlink()
            changed = True
    for new in sorted(built):
        changed |= write_if_changed(wheelhouse / new.name, new.read_bytes())
    return changed


def write_if_changed(dest: Path, data: bytes) -> bool:
    if dest.exists() and dest.read_bytes() == data:
        return False
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return True


def pack(members: list[tuple[str, bytes]]) -> bytes:
    """A tar with fixed order, times, owners and modes: same input, same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), SOURCE_DATE_EPOCH, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def project_name(source: Path) -> str:
    with (source / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, required=True, help="project directory (pyproject.toml)"
    )
    parser.add_argument("--wheelhouse", type=Path, required=True, help="output directory")
    parser.add_argument("--ref", help="build this git commit, not the working tree")
    args = parser.parse_args(argv)
    source = args.source.resolve()
    wheelhouse = args.wheelhouse.resolve()

    with tempfile.TemporaryDirectory(prefix="bulk-wheelhouse-") as tmp:
        if args.ref:
            source = Path(tmp, "source")
            source.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(args.source), "archive", "--format=tar", args.ref],
                capture_output=True,
                check=False,
            )
            if archive.returncode != 0:
                sys.stderr.write(archive.stderr.decode(errors="replace"))
                sys.stderr.write(f"build_wheelhouse: cannot export {args.ref}\n")
                return 1
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                tar.extractall(source, filter="data")
        name = project_name(source).replace("-", "_")
        runtime_dir, tools_dir = Path(tmp, "runtime"), Path(tmp, "tools")
        runtime_dir.mkdir()
        tools_dir.mkdir()
        for reqs, out in (([str(source)], runtime_dir), (list(BUILD_REQUIREMENTS), tools_dir)):
            proc = pip_wheel(reqs, out, wheelhouse)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                sys.stderr.write(f"build_wheelhouse: pip wheel failed (exit {proc.returncode})\n")
                return 1
        runtime = sorted(runtime_dir.glob("*.whl"))
        tools = [p for p in tools_dir.glob("*.whl") if not (runtime_dir / p.name).exists()]
        own = [p.name for p in runtime if p.name.startswith(name + "-")]
        if len(own) != 1:
            sys.stderr.write(f"build_wheelhouse: expected one {name} wheel, got {own}\n")
            return 1
        changed = sync(runtime + tools, wheelhouse)
        manifest = {
            "bulk_version": own[0].split("-")[1],
            "bulk_wheel": own[0],
            "python": "{}.{}".format(*sys.version_info[:2]),
            "machine": platform.machine(),
            "files": [p.name for p in runtime],
        }
        text = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        changed |= write_if_changed(wheelhouse / MANIFEST, text)
        members = [(p.name, p.read_bytes()) for p in runtime] + [(MANIFEST, text)]
        changed |= write_if_changed(wheelhouse / ARCHIVE, pack(members))
    print(json.dumps({"changed": changed, **manifest}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
