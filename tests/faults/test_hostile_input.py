"""Hostile input on the command line: BPF strings with shell metacharacters,
paths with spaces, newlines and leading dashes, interface names like
``eth0;reboot``. Nothing reaches a shell: the code never starts one (checked
on the source), the one command bulk builds (``bulk rotate`` starting a
capture) is an argument vector, and each hostile value either works as the
literal it is or gives one clear error line. A canary file proves that no
metacharacter was ever interpreted.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA
from tests.faults.harness import assert_clean_cli, run_cli

REPO = Path(__file__).parents[2]
TRACE = DATA / "zeek-http-get.pcap"


def hostile(canary: Path) -> list[str]:
    """Strings a shell would act on: each would create ``canary`` if interpreted."""
    c = str(canary)
    return [
        f"tcp; touch {c}",
        f"tcp && touch {c}",
        f"tcp | touch {c}",
        f"$(touch {c})",
        f"`touch {c}`",
        f"tcp\ntouch {c}",
        f"' ; touch {c} ; '",
        f'" ; touch {c} ; "',
        f"tcp > {c}",
    ]


# -- the source never starts a shell ---------------------------------------------


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    if isinstance(func, ast.Name):
        return func.id
    return ""


def test_the_code_never_starts_a_shell() -> None:
    offences = []
    sources = sorted((REPO / "bulk").rglob("*.py"))
    assert sources
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree):
            name = _name(call.func)
            where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
            if name in ("os.system", "os.popen", "os.execlp", "os.spawnlp", "commands.getoutput"):
                offences.append(where)
            for kw in call.keywords:
                if kw.arg == "shell" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is False
                ):
                    offences.append(f"{where} shell=")
            if name.startswith("subprocess.") and call.args:
                first = call.args[0]
                if isinstance(first, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                    offences.append(f"{where}: a command string, not an argument list")
    assert not offences, offences


def test_rotate_starts_the_capture_with_an_argument_vector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one command bulk builds: every value is one argument, no shell."""
    from bulk.capture import control  # noqa: PLC0415

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_popen(argv: Any, **kw: Any) -> Any:
        seen["argv"], seen["kw"] = argv, kw
        raise Stop

    monkeypatch.setattr(control.subprocess, "Popen", fake_popen)
    iface = "eth0;reboot $(id)"
    d = tmp_path / "dir with space;$(id)\nnewline"
    with pytest.raises(Stop):
        control.start_detached(str(d), iface)
    argv = seen["argv"]
    assert isinstance(argv, list) and not seen["kw"].get("shell")
    assert argv[-4:] == ["-i", iface, "--dir", str(d)]


# -- BPF strings -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["extract", "contents", "backdoor", "slice"])
def test_bpf_with_shell_metacharacters(tmp_path: Path, command: str) -> None:
    canary = tmp_path / "canary"
    for i, expr in enumerate(hostile(canary)):
        out = tmp_path / f"out{i}"
        argv = {
            "extract": ["extract", "-r", str(TRACE), "-w", str(out), expr],
            "contents": ["contents", "-q", "-r", str(TRACE), "-o", str(out), "-f", expr],
            "backdoor": ["backdoor", "-r", str(TRACE), "-f", expr],
            # slice has no filter: the string is a time spec (and must be refused)
            "slice": ["slice", expr, str(TRACE), "-w", str(out)],
        }[command]
        res = run_cli(argv)
        assert_clean_cli(res, command, allowed=(2,))
        assert "bad filter" in res.stderr or command == "slice", res.stderr
        assert not canary.exists(), f"{expr!r} was run by a shell"


# -- paths ----------------------------------------------------------------------------

ODD_NAMES = [
    "with space.pcap",
    "new\nline.pcap",
    "-leading-dash.pcap",
    "--help.pcap",
    "semi;colon $(x) `y` 'q' \"d\".pcap",
    "ü-ñ-é.pcap",
    "x" * 200 + ".pcap",
]


@pytest.mark.parametrize("name", ODD_NAMES, ids=[f"name{i}" for i in range(len(ODD_NAMES))])
def test_odd_paths_are_plain_file_names(tmp_path: Path, name: str) -> None:
    src = tmp_path / name
    shutil.copy(TRACE, src)
    out = tmp_path / ("out-" + name)
    # A leading dash needs '--' (or ./) as with every Unix tool.
    res = run_cli(["info", "--", str(src) if not name.startswith("-") else name], 20)
    if name.startswith("-"):
        cwd_res = _in_dir(tmp_path, ["info", "--", name])
        assert cwd_res.returncode == 0, cwd_res.stderr
    else:
        assert res.status == 0, res.stderr
    res = run_cli(["slice", "0", "-w", str(out), str(src)])
    assert res.status == 0, res.stderr
    assert out.read_bytes() == TRACE.read_bytes()  # the whole file, untouched
    res = run_cli(["extract", "-r", str(src), "-w", str(out) + ".x", "tcp"])
    assert_clean_cli(res, "extract", allowed=(0,))
    cdir = tmp_path / ("contents " + name)
    res = run_cli(["contents", "-q", "-r", str(src), f"-o{cdir}"])
    assert res.status == 0 and (cdir / "contents.jsonl").exists(), res.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        [name, "out-" + name, "out-" + name + ".x"]
    )


def _in_dir(d: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulk", *args],
        cwd=d, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


# -- interface names -------------------------------------------------------------------


def test_hostile_interface_names(tmp_path: Path) -> None:
    """In a network namespace of its own (only 'lo' exists there): every hostile
    name is refused with one line, runs nothing, writes nothing outside --dir."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    canary = tmp_path / "canary"
    names = [
        f"eth0;touch {canary}",
        f"$(touch {canary})",
        f"`touch {canary}`",
        "../../etc",
        "a/b",
        "x" * 40,
        "-i",
        "",
        "lo\nlo",
    ]
    d = tmp_path / "archive"
    for name in names:
        for args in (["capture", "-i", name, "--dir", str(d)],
                     ["rotate", "-i", name, "--dir", str(d)]):  # fmt: skip
            proc = subprocess.run(
                ["unshare", "-n", sys.executable, "-m", "bulk", *args],
                capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
            )  # fmt: skip
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            assert proc.returncode != 0, (args, proc.stdout, proc.stderr)
            assert "Traceback" not in proc.stderr
            assert len(lines) == 1 and lines[0].startswith(f"bulk {args[0]}: "), proc.stderr
            assert not canary.exists(), f"{name!r} reached a shell"
    outside = sorted(p.name for p in tmp_path.iterdir() if p.name != "archive")
    assert outside == [], outside
    if d.exists():
        # Nothing but the archive's own state: no trace named after a hostile string.
        assert not [p for p in d.rglob("*") if p.suffix in (".pcap", ".open")]
