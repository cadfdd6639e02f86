"""The Ansible side: lint, syntax, argument specs and docs, rendered templates.

Nothing here touches this machine: playbooks are only syntax-checked, and the
templates are rendered by Ansible into a scratch directory (tests/ansible_render.py)
and validated there (TOML parse, systemd-analyze verify, sh -n), plus a run of
the backdoor report script against a stand-in for bulk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bulk.capture.options import resolve_options
from bulk.commands import capture as capture_cmd
from bulk.commands import compress as compress_cmd
from bulk.commands import rotate as rotate_cmd
from bulk.config import Config, load_config
from tests.ansible_render import ROLES, ROOT, inventory_vars, render, role_defaults, tool

PLAYBOOKS = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))
HOSTS = [
    ("lab", "sensor1"),
    ("production.example", "sensor-core"),
]
MANAGED = "{{ ansible_managed | comment }}"
# bulk capture's options, as bulk/commands/capture.py hands them to resolve_options.
CAPTURE_KEYS = (
    "interface",
    "dir",
    "rotate_seconds",
    "rotate_bytes",
    "align",
    "snaplen",
    "buffer",
    "filter",
    "workers",
    "promisc",
)


def run(cmd: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0")
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False, **kw
    )


# --- linters and syntax ------------------------------------------------------


def test_yamllint_finds_nothing() -> None:
    proc = run([tool("yamllint"), "--strict", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile_finds_nothing() -> None:
    config = yaml.safe_load((ROOT / ".ansible-lint").read_text())
    assert config["profile"] == "production"
    assert not config.get("skip_list") and not config.get("warn_list"), "no blanket skips"
    proc = run([tool("ansible-lint"), "--nocolor"])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]


@pytest.mark.parametrize("inventory", ["lab", "production.example"])
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook: str, inventory: str) -> None:
    proc = run(
        [
            tool("ansible-playbook"),
            "--syntax-check",
            "-i",
            f"inventory/{inventory}",
            f"playbooks/{playbook}",
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- argument specs, defaults, docs --------------------------------------------


def specs(role: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options: dict[str, Any] = data["argument_specs"]["main"]["options"]
    return options


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_specified_with_the_same_value(role: str) -> None:
    options = specs(role)
    defaults = role_defaults(role)
    assert set(defaults) == {name for name, o in options.items() if not o.get("required")}
    for name, option in options.items():
        assert option.get("type") and option.get("description"), f"{name}: type and description"
        if name in defaults:
            assert option.get("default") == defaults[name], (
                f"{name}: spec default != defaults/main.yml"
            )


@pytest.mark.parametrize("role", ROLES)
def test_variables_and_registers_carry_the_role_prefix(role: str) -> None:
    base = ROOT / "roles" / role
    names = set(specs(role)) | set(role_defaults(role))
    if (base / "vars" / "main.yml").exists():
        internal = set(yaml.safe_load((base / "vars" / "main.yml").read_text()))
        assert all(n.startswith(f"{role}__") for n in internal), internal
    for tasks in (base / "tasks").glob("*.yml"):
        for task in yaml.safe_load(tasks.read_text()) or []:
            if "register" in task:
                names.add(task["register"])
    assert names and all(n.startswith(f"{role}_") for n in names), sorted(names)


@pytest.mark.parametrize("role", ROLES)
def test_main_only_imports_tagged_concern_files_asserts_first(role: str) -> None:
    tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "main.yml").read_text())
    assert [list(t)[1] for t in tasks] == ["ansible.builtin.import_tasks"] * len(tasks)
    assert tasks[0]["ansible.builtin.import_tasks"] == "assert.yml"
    for task in tasks:
        assert role in task["tags"] and len(task["tags"]) == 2, task


def test_role_docs_are_in_step_with_argument_specs() -> None:
    proc = run([str(Path(tool("python"))), "scripts/gen_role_docs.py", "--check"])
    assert proc.returncode == 0, proc.stderr
    for role in ROLES:
        page = (ROOT / "docs" / "roles" / f"{role}.md").read_text()
        for name in specs(role):
            assert f"`{name}`" in page


def test_templates_start_with_ansible_managed() -> None:
    templates = sorted((ROOT / "roles").glob("bulk_*/templates/**/*.j2"))
    assert len(templates) >= 8
    for path in templates:
        lines = path.read_text().splitlines()
        first = lines[1] if lines[0].startswith("#!") else lines[0]
        assert first == MANAGED, path


def test_install_config_falls_back_to_the_capture_defaults() -> None:
    """bulk.toml and the unit's command line agree even if bulk_capture is not in the play."""
    capture = {"bulk_capture_interfaces": [], **role_defaults("bulk_capture")}
    text = (ROOT / "roles" / "bulk_install" / "defaults" / "main.yml").read_text()
    found = re.findall(r"(bulk_capture_\w+) \| default\(([^)]*)\)", text)
    fallbacks = {name: yaml.safe_load(value) for name, value in found}
    assert len(fallbacks) >= 9
    for name, value in fallbacks.items():
        expected = capture[name]
        assert value == expected or (value == "none" and expected is None), name


# --- rendered templates ----------------------------------------------------------


@pytest.fixture(scope="module", params=HOSTS, ids=[f"{i}:{h}" for i, h in HOSTS])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    inventory, host = request.param
    out = render(tmp_path_factory.mktemp(f"render-{host}"), inventory, host)
    expected = {**role_defaults("bulk_capture"), **inventory_vars(inventory, host)}
    return out, expected


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit, repeated keys kept."""
    section, entries = "", []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key, value))
    return entries


def capture_argv(out: Path) -> list[str]:
    unit = out / "bulk_capture/etc/systemd/system/bulk-capture@.service"
    (exec_start,) = [v for s, k, v in unit_entries(unit) if k == "ExecStart"]
    return shlex.split(exec_start)


def parse_with(command: Any, argv: list[str]) -> argparse.Namespace:
    """argv parsed by the real bulk command's own argument parser."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    command.add_arguments(parser)
    return parser.parse_args(argv)


def cron_jobs(path: Path) -> list[tuple[str, str, str, list[str]]]:
    """(minute, hour, user, bulk argv after the executable) of each cron.d entry."""
    jobs = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        minute, hour, _dom, _mon, _dow, user, command = line.split(None, 6)
        argv = shlex.split(command.replace("\\%", "%"))
        assert argv[:3] == ["/usr/bin/systemd-cat", "-t", argv[2]] and argv[2].startswith("bulk-")
        jobs.append((minute, hour, user, argv[3:]))
    return jobs


def test_capture_unit_and_bulk_toml_configure_the_same_capture(rendered: Any) -> None:
    """The unit's command line alone, or bulk.toml alone, gives the same capture."""
    out, expected = rendered
    toml = out / "bulk_install/etc/bulk/bulk.toml"
    config = load_config(str(toml))
    argv = capture_argv(out)
    assert argv[0] == "/opt/bulk/bin/bulk" and argv[1] == "capture"
    assert config.section("capture")["interfaces"] == expected["bulk_capture_interfaces"]
    for iface in expected["bulk_capture_interfaces"]:
        a = parse_with(capture_cmd, [x.replace("%I", iface) for x in argv[2:]])
        cli = {key: getattr(a, key) for key in CAPTURE_KEYS}
        from_unit = resolve_options(cli, Config())
        from_file = resolve_options({"interface": iface}, config)
        assert from_unit == from_file
        assert from_unit.directory == expected["bulk_capture_dir"]
        assert from_unit.rotate_seconds == expected["bulk_capture_rotate_seconds"]
        assert from_unit.align is expected["bulk_capture_align"]
        assert from_unit.snaplen == expected["bulk_capture_snaplen"]
        assert (from_unit.rotate_bytes is None) == (expected["bulk_capture_rotate_bytes"] is None)


def test_cron_entries_parse_and_agree_with_bulk_toml(
    rendered: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, expected = rendered
    toml = out / "bulk_install/etc/bulk/bulk.toml"
    jobs = cron_jobs(out / "bulk_capture/etc/cron.d/bulk-capture")
    rotates = [j for j in jobs if "rotate" in j[3]]
    (compress,) = [j for j in jobs if "compress" in j[3]]
    assert all(user == "bulk" for _, _, user, _ in jobs)

    # One rotation per interface, hourly at minute 0 unless configured otherwise.
    ifaces = []
    for minute, hour, _, argv in rotates:
        assert (minute, hour) == (expected["bulk_capture_rotate_minute"], "*")
        assert argv[0] == "/opt/bulk/bin/bulk" and argv[1] == "rotate"
        a = parse_with(rotate_cmd, argv[2:])
        assert a.dir == expected["bulk_capture_dir"]
        ifaces.append(a.interface)
    assert ifaces == expected["bulk_capture_interfaces"]

    # Compression: the cron line alone, or bulk.toml alone, gives the same run.
    minute, _, _, argv = compress
    assert minute == expected["bulk_capture_compress_minute"]
    bulk_at = argv.index("/opt/bulk/bin/bulk")
    assert argv[bulk_at + 1] == "compress"
    monkeypatch.setenv("BULK_CONFIG", "")
    from_cron = compress_cmd._options(parse_with(compress_cmd, argv[bulk_at + 2 :]))
    monkeypatch.setenv("BULK_CONFIG", str(toml))
    from_file = compress_cmd._options(parse_with(compress_cmd, []))
    assert from_cron == from_file
    budget = str(expected["bulk_capture_compress_max_disk"])
    assert budget.endswith("%") and from_cron.policy.budget is not None
    assert from_cron.policy.budget.percent == float(budget[:-1])
    assert from_cron.policy.keep_days == expected["bulk_capture_compress_keep_days"]

    (analysis,) = cron_jobs(out / "bulk_analysis/etc/cron.d/bulk-analysis")
    assert analysis[2] == "bulk"
    assert analysis[3] == [str(out / "bulk_analysis/usr/local/sbin/bulk-backdoor-report")]


def test_capture_unit_runs_unprivileged_and_sandboxed(rendered: Any) -> None:
    out, expected = rendered
    unit = out / "bulk_capture/etc/systemd/system/bulk-capture@.service"
    entries = unit_entries(unit)
    service = {k: v for s, k, v in entries if s == "Service"}
    assert service["User"] == "bulk" and service["Group"] == "bulk"
    caps = {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(service["AmbientCapabilities"].split()) == caps
    assert set(service["CapabilityBoundingSet"].split()) == caps
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    # world-writable places ProtectSystem= leaves shared with the host
    assert {"-/dev/shm", "-/dev/mqueue", "-/run/lock"} <= set(service["InaccessiblePaths"].split())
    writable = service["ReadWritePaths"].split()
    assert any(
        (expected["bulk_capture_dir"] + "/").startswith(p.rstrip("/") + "/") for p in writable
    )
    assert service["UMask"] == "0027"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) > 0
    assert ("Unit", "Wants", "bulk-nic@%i.service") in entries
    assert ("Unit", "After", "bulk-nic@%i.service sys-subsystem-net-devices-%i.device") in entries


@pytest.mark.parametrize(
    "unit",
    [
        "bulk_capture/etc/systemd/system/bulk-capture@.service",
        "bulk_nic/etc/systemd/system/bulk-nic@.service",
    ],
)
def test_units_pass_systemd_analyze_verify(rendered: Any, unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    out, _ = rendered
    text = (out / unit).read_text()
    # verify checks that ExecStart= is executable: point it at one that exists here.
    (exec_start,) = [v for s, k, v in unit_entries(out / unit) if k == "ExecStart"]
    text = text.replace(exec_start.split()[0], "/bin/true", 1)
    instance = tmp_path / Path(unit).name.replace("@.", "@eth0.")
    instance.write_text(text)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(instance)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_instance_names_are_systemd_escaped(tmp_path: Path) -> None:
    escape = shutil.which("systemd-escape")
    if escape is None:
        pytest.skip("systemd-escape is not installed")
    names = ["ens4", "br-lan", "eth0.100", "bond_0:1"]
    out = render(
        tmp_path,
        extra_vars={"bulk_capture_interfaces": names},
        roles=["bulk_nic", "bulk_capture"],
    )
    expected = [
        subprocess.run([escape, n], capture_output=True, text=True, check=True).stdout.strip()
        for n in names
    ]
    for role in ("bulk_nic", "bulk_capture"):
        assert json.loads((out / role / "instances.json").read_text()) == expected


def test_nic_settings_follow_overrides(rendered: Any) -> None:
    out, expected = rendered
    nic = {**role_defaults("bulk_nic"), **expected}
    overrides = nic["bulk_nic_interface_overrides"]
    for iface in expected["bulk_capture_interfaces"]:
        conf = out / f"bulk_nic/etc/bulk/nic/{iface}.conf"
        values = dict(
            line.split("=", 1) for line in conf.read_text().splitlines() if line and line[0] != "#"
        )
        o = overrides.get(iface, {})
        assert values["RX_RING"] == str(o.get("rx_ring", nic["bulk_nic_rx_ring"]))
        assert values["MTU"] == str(o.get("mtu", nic["bulk_nic_mtu"]))
        assert values["OFFLOADS"].strip('"').split() == nic["bulk_nic_offloads"]
    network = (out / "bulk_nic/etc/systemd/network/10-bulk-capture.network").read_text()
    assert f"Name={' '.join(expected['bulk_capture_interfaces'])}\n" in network


@pytest.mark.parametrize(
    "script",
    ["bulk_nic/usr/local/sbin/bulk-nic-setup", "bulk_analysis/usr/local/sbin/bulk-backdoor-report"],
)
def test_scripts_parse_as_posix_sh(rendered: Any, script: str) -> None:
    out, _ = rendered
    path = out / script
    assert path.read_text().startswith("#!/bin/sh\n")
    proc = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# --- the backdoor report script, against a stand-in for bulk ----------------------


def _window_end(spec: str) -> int:
    """The period boundary an inclusive end one nanosecond before it stands for."""
    seconds, _, fraction = spec.partition(".")
    assert fraction == "999999999", spec
    return int(seconds) + 1


STUB = """#!/bin/sh
printf '%s\\n' "$*" >>"{calls}"
[ -f "{fail}" ] && exit 3
printf '{{"service": "ssh", "args": "%s"}}\\n' "$*"
"""


def test_backdoor_report_covers_each_closed_period_once(tmp_path: Path) -> None:
    period = 600
    calls, fail = tmp_path / "calls", tmp_path / "fail"
    stub = tmp_path / "bulk"
    stub.write_text(STUB.format(calls=calls, fail=fail))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    logs, state = tmp_path / "log", tmp_path / "state"
    logs.mkdir()
    state.mkdir()
    out = render(
        tmp_path / "render",
        extra_vars={
            "bulk_analysis_command": str(stub),
            "bulk_analysis_log_dir": str(logs),
            "bulk_analysis_state_dir": str(state),
            "bulk_analysis_period": period,
        },
        roles=["bulk_analysis"],
    )
    script = out / "bulk_analysis/usr/local/sbin/bulk-backdoor-report"

    def report() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script)], capture_output=True, text=True, check=False)

    def windows() -> list[tuple[int, int]]:
        result = []
        for line in calls.read_text().splitlines() if calls.exists() else []:
            argv = line.split()
            assert argv[:3] == ["backdoor", "--dir", "/srv/bulk/traces"] and "--json" in argv
            result.append(
                (int(argv[argv.index("--start") + 1]), _window_end(argv[argv.index("--end") + 1]))
            )
        return result

    before = int(time.time())
    assert report().returncode == 0
    ((start, end),) = windows()
    assert end % period == 0 and start == end - period and end <= int(time.time())
    assert end > before - period
    assert (state / "backdoor.last").read_text().strip() == str(end)
    (log,) = logs.glob("backdoor-*.jsonl")
    assert json.loads(log.read_text())["service"] == "ssh"

    # The next run starts where the last ended: nothing twice, nothing skipped.
    assert report().returncode == 0
    assert all(w[0] == prev[1] for prev, w in zip(windows(), windows()[1:], strict=False))

    # A failing bulk leaves the state and the reports alone, so the next run retries.
    (state / "backdoor.last").write_text(f"{end - 3 * period}\n")
    fail.touch()
    lines_before = sum(len(p.read_text().splitlines()) for p in logs.glob("backdoor-*.jsonl"))
    assert report().returncode != 0
    assert (state / "backdoor.last").read_text().strip() == str(end - 3 * period)
    assert (
        sum(len(p.read_text().splitlines()) for p in logs.glob("backdoor-*.jsonl")) == lines_before
    )
    assert not list(logs.glob(".backdoor.*")), "scratch file left behind"
    assert windows()[-1][0] == end - 3 * period
