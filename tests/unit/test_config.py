"""bulk.toml defaults under the command line, and the size/duration grammars."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulk.capture.options import DEFAULT_BUFFER, resolve_options
from bulk.config import DEFAULT_DIR, Config, load_config, parse_duration, parse_size
from bulk.errors import UsageError


def test_missing_default_file_is_no_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BULK_CONFIG", raising=False)
    monkeypatch.setattr("bulk.config.DEFAULT_CONFIG", str(tmp_path / "absent.toml"))
    cfg = load_config()
    assert cfg.path is None and cfg.archive_dir(None) == DEFAULT_DIR


def test_asked_for_file_must_exist_and_parse(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="configuration file not found"):
        load_config(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("dir = \n")
    with pytest.raises(UsageError, match="invalid TOML"):
        load_config(str(bad))


def test_command_line_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "bulk.toml"
    toml.write_text(
        'dir = "/srv/x"\n[capture]\ninterface = "eth1"\nrotate_seconds = "1h"\n'
        'rotate_bytes = "1G"\nworkers = 2\nalign = true\n[compress]\nlevel = 3\n'
    )
    monkeypatch.setenv("BULK_CONFIG", str(toml))
    cfg = load_config()
    assert cfg.section("compress")["level"] == 3 and cfg.section("absent") == {}
    opts = resolve_options({"rotate_seconds": "90s", "workers": None}, cfg)
    assert (opts.interface, opts.directory, opts.rotate_seconds, opts.rotate_bytes) == (
        "eth1",
        "/srv/x",
        90.0,
        1 << 30,
    )
    assert opts.workers == 2 and opts.align and opts.buffer_size == DEFAULT_BUFFER
    opts = resolve_options({"interface": "eth9", "dir": "/tmp/y", "align": False}, cfg)
    assert (opts.interface, opts.directory, opts.align) == ("eth9", "/tmp/y", False)
    with pytest.raises(UsageError, match="--align needs --rotate-seconds"):
        resolve_options({"interface": "eth0", "align": True}, Config())
    with pytest.raises(UsageError, match="no interface"):
        resolve_options({}, Config())


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1000", 1000),
        ("64K", 65536),
        ("64KiB", 65536),
        ("100M", 100 << 20),
        ("1.5G", 3 << 29),
        ("500MB", 500_000_000),
        ("2kb", 2000),
        ("7b", 7),
        (5, 5),
    ],
)
def test_sizes(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1.5h", 5400)],
)
def test_durations(text: str, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "x", "10Q", "-1", "1 2"])
def test_bad_sizes_and_durations_name_the_value(text: str) -> None:
    with pytest.raises(UsageError, match="bad size"):
        parse_size(text)
    with pytest.raises(UsageError, match="bad duration"):
        parse_duration(text)


def test_file_that_is_not_utf8_is_invalid_toml(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'dir = "/srv/caf\xe9"\n')
    with pytest.raises(UsageError, match="invalid TOML"):
        load_config(str(bad))
