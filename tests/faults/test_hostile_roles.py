"""Hostile values in the roles' variables never reach a shell unquoted.

- The roles' input checks (their real assert tasks, run by ansible-playbook)
  refuse interface names that are not interface names, cron fields and sizes
  with anything after them, and paths or filters holding control characters:
  a trailing newline used to pass, since Python's ``$`` also matches before a
  final newline, and would have split a cron line or a unit line in two.
- What they accept is quoted: the rendered cron entries are executed the way
  cron does (``%`` handling, then ``/bin/sh -c``) with stand-ins for
  systemd-cat and bulk that record their arguments: each value arrives as one
  argument, exactly, and a canary file shows nothing was interpreted. The
  capture unit's ExecStart passes ``systemd-analyze verify`` and splits into
  the same arguments.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ansible_render import ROOT, render, tool

pytestmark = pytest.mark.skipif(
    not (Path(sys.executable).parent / "ansible-playbook").exists(),
    reason="needs the deploy extra (ansible)",
)

GOOD = ["eth0", "enp3s0f1", "eth0.100", "bond0:1", "x" * 15]
BAD = [
    "eth0;reboot",
    "$(reboot)",
    "`id`",
    "a b",
    "../x",
    "x" * 16,
    "",
    "eth0\n",
    "eth0\nx",
    "eth0\t",
    "-",
]  # fmt: skip  ("-" is valid for the kernel: a name of dashes is refused?)
BAD.remove("-")


# Each checked variable with a valid value: a candidate replaces one of them.
VALID = {
    "bulk_capture_interfaces": ["eth0"],
    "bulk_capture_rotate_minute": "0",
    "bulk_capture_compress_max_disk": "85%",
    "bulk_capture_dir": "/srv/bulk/traces",
    "bulk_capture_filter": "",
}


def _run_checks(tmp_path: Path, candidates: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    """Run bulk_capture's assert tasks once per (variable, value) candidate, in
    one ansible-playbook run; returns the accepted and the refused candidates."""
    facts = {
        var: f"{{{{ candidate[1] if candidate[0] == {var!r} else valid[{var!r}] }}}}"
        for var in VALID
    }
    check = [
        {
            "name": "Try one candidate",
            "block": [
                {"name": "Set the candidate", "ansible.builtin.set_fact": facts},
                {"name": "Run the role's input checks",
                 "ansible.builtin.include_role": {"name": "bulk_capture", "tasks_from": "assert"}},
                {"name": "Accepted", "ansible.builtin.set_fact": {
                    "accepted": "{{ accepted + [candidate] }}"}},
            ],
            "rescue": [
                {"name": "Refused", "ansible.builtin.set_fact": {
                    "refused": "{{ refused + [candidate] }}"}},
            ],
        }
    ]  # fmt: skip
    out = tmp_path / "result.json"
    play = [
        {
            "name": "Hostile values",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"accepted": [], "refused": [], "valid": VALID,
                     "candidates": [list(c) for c in candidates]},
            "tasks": [
                {"name": "Each candidate", "ansible.builtin.include_tasks": str(tmp_path / "c.yml"),
                 "loop": "{{ candidates }}", "loop_control": {"loop_var": "candidate"}},
                {"name": "Results", "ansible.builtin.copy": {
                    "content": "{{ {'accepted': accepted, 'refused': refused} | to_json }}",
                    "dest": str(out), "mode": "0644"}},
            ],
        }
    ]  # fmt: skip
    (tmp_path / "c.yml").write_text(yaml.safe_dump(check, sort_keys=False))
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal",
    )
    proc = subprocess.run(
        [tool("ansible-playbook"), "-i", "localhost,", str(tmp_path / "play.yml"),
         "-e", f"ansible_python_interpreter={sys.executable}"],
        capture_output=True, text=True, timeout=300, check=False, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    result: dict[str, list[Any]] = json.loads(out.read_text())
    return result


CASES: list[tuple[str, list[Any], list[Any]]] = [
    ("bulk_capture_interfaces", [[n] for n in GOOD], [[n] for n in BAD]),
    ("bulk_capture_rotate_minute", ["0", "*/15", "5,35"], ["0\n", "0;reboot", "0 * * * *"]),
    ("bulk_capture_compress_max_disk", ["85%", "500G"], ["85%\n", "85% ; reboot", "1G\n"]),
    (
        "bulk_capture_dir",
        ["/srv/bulk/tr aces", "/srv/bulk/a'b\"c$(x)"],
        ["/srv/bulk/x\n", "/srv/bulk/x\ny", "/srv/bulk/\x07"],
    ),
    ("bulk_capture_filter", ["tcp and not port 22", "tcp; reboot"], ["tcp\n", "tcp\nreboot"]),
]


def test_capture_role_refuses_hostile_values(tmp_path: Path) -> None:
    """Interface names that are not interface names; cron fields, budgets, paths
    and filters with anything after them or with control characters."""
    candidates = [(var, v) for var, good, bad in CASES for v in good + bad]
    result = _run_checks(tmp_path, candidates)
    want_accepted = [[var, v] for var, good, _bad in CASES for v in good]
    want_refused = [[var, v] for var, _good, bad in CASES for v in bad]
    assert result["accepted"] == want_accepted
    assert result["refused"] == want_refused


def test_nic_role_checks_names_like_the_capture_role() -> None:
    """bulk_nic's assert needs gathered facts: its name pattern is checked here
    with Ansible's own 'match' semantics (re.match)."""
    nic = yaml.safe_load((ROOT / "roles/bulk_nic/vars/main.yml").read_text())
    cap = yaml.safe_load((ROOT / "roles/bulk_capture/vars/main.yml").read_text())
    assert nic["bulk_nic__ifname_re"] == cap["bulk_capture__ifname_re"]
    pattern = nic["bulk_nic__ifname_re"]
    assert [n for n in GOOD + BAD if re.match(pattern, n)] == GOOD
    assert not re.match(nic["bulk_nic__ring_re"], "max\n")


# -- what is accepted is quoted ------------------------------------------------------


PROGRAMS = ("/usr/bin/systemd-cat", "/usr/bin/nice", "/usr/bin/ionice", "/opt/bulk/bin/bulk")


def cron_command(job: str) -> str:
    """What Debian's cron (vixie cron 3.0pl1) runs of a crontab command: a % ends
    the command (the rest goes to its stdin) unless right after a backslash,
    which then goes. A backslash before anything else stays, so "\\\\%" is a
    backslash and the end of the command. (Checked against the real cron
    binary: '85\\%' gives 85%, '85\\\\%' gives 85\\ and the rest is lost.)"""
    out: list[str] = []
    escaped = False
    for ch in job:
        if escaped:
            escaped = False
            if ch == "%":
                out[-1] = "%"
                continue
            out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            out.append(ch)
            continue
        if ch == "%":
            break
        out.append(ch)
    return "".join(out)


def test_cron_command_model() -> None:
    assert cron_command("a 85\\% b") == "a 85% b"
    assert cron_command("a 85\\\\% b") == "a 85\\\\"
    assert cron_command("a %b") == "a "
    assert cron_command("a \\x") == "a \\x"


def _cron_argv(job: str, stub_dir: Path, canary: Path) -> list[list[str]]:
    """Run one cron.d command as cron would, with every absolute program replaced
    by a stand-in that records its argv. Returns the recorded argvs."""
    record = stub_dir / "argv.jsonl"
    stub = stub_dir / "stub"
    stub.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    stub.chmod(0o755)
    command = cron_command(job)
    for prog in PROGRAMS:
        command = command.replace(prog + " ", f"{stub} ")
    proc = subprocess.run(["/bin/sh", "-c", command], cwd=stub_dir, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not canary.exists(), f"the shell interpreted part of: {job}"
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_accepted_hostile_values_arrive_as_single_arguments(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    directory = f"/srv/bulk/tr aces;touch {canary} $(touch {canary}) `x` 'q' \"d\" 50%"
    flt = f"tcp and not (port 22 or port 23) ; touch {canary} | x & y > z"
    out = render(
        tmp_path / "r",
        extra_vars={
            "bulk_capture_interfaces": ["eth1", "enp3s0f1"],
            "bulk_capture_dir": directory,
            "bulk_capture_filter": flt,
            "bulk_capture_compress_max_disk": "85%",
        },
        roles=["bulk_install", "bulk_capture"],
    )
    cron = (out / "bulk_capture/etc/cron.d/bulk-capture").read_text()
    jobs = [ln.split(None, 6)[6] for ln in cron.splitlines() if ln and not ln.startswith("#")]
    recorded = []
    for job in jobs:
        stub_dir = tmp_path / f"job{len(recorded)}"
        stub_dir.mkdir()
        recorded.append(_cron_argv(job, stub_dir, canary))
    # The stand-in for systemd-cat records one argv: -t TAG and the whole command
    # (the real one would run it; here the program paths are stand-ins too).
    tails = [argv[0][2:] for argv in recorded]
    stub = str(tmp_path / "job0" / "stub")
    assert [t[1:] for t in tails[:2]] == [
        ["rotate", "-i", "eth1", "--dir", directory],
        ["rotate", "-i", "enp3s0f1", "--dir", directory],
    ], tails
    compress = tails[2]
    assert compress[compress.index("compress") + 1 :][:2] == ["--dir", directory]
    assert compress[-2:] == ["--max-disk", "85%"]
    _ = stub
    # The unit: systemd's verify accepts it, and the filter is one argument.
    unit = out / "bulk_capture/etc/systemd/system/bulk-capture@.service"
    exec_start = next(ln.split("=", 1)[1] for ln in unit.read_text().splitlines()
                      if ln.startswith("ExecStart="))  # fmt: skip
    argv = shlex.split(exec_start.replace("%%", "%"))
    assert argv[argv.index("--filter") + 1] == flt
    assert argv[argv.index("--dir") + 1] == directory
    if shutil.which("systemd-analyze"):
        check = tmp_path / "verify"
        check.mkdir()
        text = unit.read_text().replace(exec_start.split()[0], "/bin/true", 1)
        (check / "bulk-capture@.service").write_text(text)
        proc = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(check / "bulk-capture@.service")],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        problems = [ln for ln in proc.stderr.splitlines()
                    if "bulk-capture@" in ln and ("Ignoring" in ln or "Invalid" in ln
                                                   or "quot" in ln.lower())]  # fmt: skip
        assert not problems, proc.stderr
