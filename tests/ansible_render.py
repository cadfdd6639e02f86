"""Render the bulk_* roles' templates exactly as Ansible would, without a target.

The roles' own defaults, vars and templates are linked into a scratch roles
directory next to one extra task file per role (``tasks/render.yml``) that
renders every template into a local directory. A playbook imports those task
files for one inventory host over a local connection, so the real precedence
applies (role defaults < inventory group_vars < host_vars < role vars) and
the real filters run; nothing outside the scratch directory is touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = sorted(p.name for p in (ROOT / "roles").glob("bulk_*"))
VENV_BIN = Path(sys.executable).parent

# Templates rendered once per capture interface (dest named after the interface).
PER_INTERFACE = {"bulk_nic": {"etc/bulk/nic/interface.conf"}}
# Internal lists of systemd instance names, dumped to <role>/instances.json.
INSTANCES = {"bulk_nic": "bulk_nic__instances", "bulk_capture": "bulk_capture__instances"}
# The roles' real cron task files also run, writing their cron.d file (and the
# script it calls) under the output directory instead of /etc and /usr.
CRON_TASKS = {
    "bulk_capture": {"bulk_capture_cron_file": "etc/cron.d/bulk-capture"},
    "bulk_analysis": {
        "bulk_analysis_cron_file": "etc/cron.d/bulk-analysis",
        "bulk_analysis_script": "usr/local/sbin/bulk-backdoor-report",
    },
}


def tool(name: str) -> str:
    """An Ansible tool from the virtualenv running the tests."""
    path = VENV_BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: install the deploy extra (pip install -e '.[deploy]')")
    return str(path)


def _render_tasks(role: str, templates: list[str]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for rel in templates:
        dest = rel.removesuffix(".j2")
        if dest in PER_INTERFACE.get(role, set()):
            per_iface = f"{Path(dest).parent}/{{{{ item }}}}.conf"
            tasks.append(
                {
                    "name": f"Render {dest} per interface",
                    "ansible.builtin.template": {
                        "src": rel,
                        "dest": f"{{{{ bulk_render_out }}}}/{role}/{per_iface}",
                        "mode": "0644",
                    },
                    "loop": "{{ bulk_nic_interfaces }}",
                }
            )
        else:
            tasks.append(
                {
                    "name": f"Render {dest}",
                    "ansible.builtin.template": {
                        "src": rel,
                        "dest": f"{{{{ bulk_render_out }}}}/{role}/{dest}",
                        "mode": "0644",
                    },
                }
            )
    return tasks


def render(
    out: Path,
    inventory: str = "lab",
    host: str = "sensor1",
    extra_vars: dict[str, Any] | None = None,
    roles: list[str] | None = None,
) -> Path:
    """Render the role templates for ``host`` of ``inventory/<inventory>`` into ``out``.

    ``roles`` (default: all) are imported the way site.yml lists them, so
    their defaults see each other as in a real play.
    """
    out.mkdir(parents=True, exist_ok=True)
    roles_dir = out / ".roles"
    for role in ROLES:
        src = ROOT / "roles" / role
        dst = roles_dir / role
        (dst / "tasks").mkdir(parents=True, exist_ok=True)
        for sub in ("defaults", "vars", "templates"):
            if (src / sub).is_dir() and not (dst / sub).exists():
                (dst / sub).symlink_to(src / sub)
        for task_file in (src / "tasks").glob("*.yml"):
            if task_file.name != "main.yml" and not (dst / "tasks" / task_file.name).exists():
                (dst / "tasks" / task_file.name).symlink_to(task_file)
        templates = sorted(
            str(p.relative_to(src / "templates")) for p in (src / "templates").rglob("*.j2")
        )
        tasks = _render_tasks(role, templates)
        if role in INSTANCES:
            tasks.append(
                {
                    "name": "Record the systemd instance names",
                    "ansible.builtin.copy": {
                        "content": f"{{{{ {INSTANCES[role]} | to_json }}}}",
                        "dest": f"{{{{ bulk_render_out }}}}/{role}/instances.json",
                        "mode": "0644",
                    },
                }
            )
        if role in CRON_TASKS:
            (out / role / "etc/cron.d").mkdir(parents=True, exist_ok=True)
            tasks.append(
                {"name": "Write the cron file", "ansible.builtin.import_tasks": "cron.yml"}
            )
        (dst / "tasks" / "render.yml").write_text(yaml.safe_dump(tasks))
        for rel in templates:
            (out / role / rel).parent.mkdir(parents=True, exist_ok=True)
        for dest_dirs in PER_INTERFACE.get(role, set()):
            (out / role / dest_dirs).parent.mkdir(parents=True, exist_ok=True)
    play = [
        {
            "name": "Render the bulk roles' templates",
            "hosts": host,
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable, "bulk_render_out": str(out)},
            "tasks": [
                {
                    "name": f"Render {role}",
                    "ansible.builtin.import_role": {"name": role, "tasks_from": "render"},
                    "vars": {k: str(out / role / v) for k, v in CRON_TASKS.get(role, {}).items()},
                }
                for role in roles or ROLES
            ],
        }
    ]
    playbook = out / ".render.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    cmd = [tool("ansible-playbook"), "-i", str(ROOT / "inventory" / inventory), str(playbook)]
    for key, value in (extra_vars or {}).items():
        cmd += ["-e", yaml.safe_dump({key: value}, default_flow_style=True).strip()]
    # ansible.builtin.cron insists on finding crontab(1) even when it only edits
    # a cron_file; this stand-in fails loudly should it ever be run.
    stub_bin = out / ".bin"
    stub_bin.mkdir(exist_ok=True)
    crontab = stub_bin / "crontab"
    crontab.write_text("#!/bin/sh\necho 'crontab stand-in: not to be run' >&2\nexit 1\n")
    crontab.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{stub_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        ANSIBLE_ROLES_PATH=str(roles_dir),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal",
        ANSIBLE_LOCALHOST_WARNING="false",
    )
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"rendering failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return out


def inventory_vars(inventory: str, host: str) -> dict[str, Any]:
    """group_vars/bulk_sensors.yml then host_vars/<host>.yml of an inventory, merged."""
    base = ROOT / "inventory" / inventory
    merged: dict[str, Any] = {}
    for path in (base / "group_vars" / "bulk_sensors.yml", base / "host_vars" / f"{host}.yml"):
        if path.exists():
            merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


def role_defaults(role: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    return data or {}
