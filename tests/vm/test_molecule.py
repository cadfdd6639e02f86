"""The Molecule scenarios, run as a test: a fresh Debian VM converged and verified.

`molecule test` (scenario ``default``) builds or reuses the cached VM image
(scripts/vm/build-image.sh), boots it under QEMU, applies playbooks/site.yml,
checks idempotence and runs molecule/default/verify.yml, which injects real
traces into the VM's capture NIC and checks capture, rotation, compression,
analysis and the capture service's least privilege end to end (about 4-5
minutes: docs/molecule.md). The two-VM ``fleet`` scenario runs only when
asked for (BULK_MOLECULE_FLEET=1).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]


def _missing_tools() -> list[str]:
    needed = ["qemu-system-x86_64", "qemu-img", "debootstrap", "mke2fs", "tcpreplay", "capinfos"]
    return [tool for tool in needed if shutil.which(tool) is None]


def _molecule(scenario: str) -> subprocess.CompletedProcess[str]:
    missing = _missing_tools()
    if "qemu-system-x86_64" in missing:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    assert not missing, f"needed by the VM test but not installed: {', '.join(missing)}"
    # The scenarios run on Mitogen's strategy (molecule/shared/strategy).
    assert importlib.util.find_spec("ansible_mitogen") is not None, (
        "mitogen is not installed: pip install -e '.[deploy]' (scripts/dev.sh does)"
    )
    assert os.geteuid() == 0, "the VM test needs root (debootstrap, tap devices)"
    env = dict(os.environ)
    # molecule and ansible-playbook come from the same virtualenv as pytest.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    env["NO_COLOR"] = "1"
    command = [str(VENV_BIN / "molecule"), "test", "--scenario-name", scenario]
    try:
        return subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700, check=False
        )
    except subprocess.TimeoutExpired:
        # QEMU runs detached: stop it and remove its tap before failing.
        subprocess.run(
            [str(VENV_BIN / "molecule"), "destroy", "--scenario-name", scenario],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        raise


def _report(proc: subprocess.CompletedProcess[str]) -> str:
    # The end of the log holds the failing task and Molecule's recap.
    tail = (proc.stdout + proc.stderr)[-12000:]
    return f"molecule exited {proc.returncode}; last output:\n{tail}"


def test_default_scenario_end_to_end() -> None:
    proc = _molecule("default")
    assert proc.returncode == 0, _report(proc)


@pytest.mark.skipif(
    os.environ.get("BULK_MOLECULE_FLEET") != "1",
    reason="two-VM fleet scenario runs on demand: BULK_MOLECULE_FLEET=1",
)
def test_fleet_scenario_merges_two_sensors() -> None:
    proc = _molecule("fleet")
    assert proc.returncode == 0, _report(proc)
