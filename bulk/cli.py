"""The ``bulk`` command line: argparse subcommands, one module per command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from bulk import __version__
from bulk.commands import COMMANDS
from bulk.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, BulkError

EPILOG = """\
exit status:
  0  success
  1  runtime failure (capture failed, disk full, ...)
  2  bad input: unreadable or corrupt trace, bad filter, bad time spec, bad usage
  3  a trace ended mid-record: every whole packet was processed, then stopped
  130 interrupted

Run 'bulk COMMAND --help' for a command's options and examples.
Documentation: docs/commands/COMMAND.md in the source tree.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, sized without importing shutil: argparse makes a
    formatter for every argument added, and its default width comes from
    shutil.get_terminal_size (shutil imports bz2 and lzma: about 5 ms of every
    start)."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    """What shutil.get_terminal_size().columns gives: $COLUMNS, else the terminal's
    width, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"bulk.commands.{name}")


def _add_command(sub: argparse._SubParsersAction[_Parser], module: ModuleType) -> None:
    cmd = sub.add_parser(
        module.NAME,
        help=module.HELP,
        description=module.DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    module.add_arguments(cmd)
    cmd.set_defaults(func=module.run, command=module.NAME)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``only``) the top level with one command: importing
    a command module can be costly, and a run needs just its own."""
    parser = _Parser(
        prog="bulk",
        description=(
            "bulk: capture every packet into a rotating, compressed archive, and answer "
            "forensic questions about stored traffic (slice a time window, extract by BPF, "
            "write connection contents, find services on non-standard ports)."
        ),
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"bulk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS if only is None else (only,):
        _add_command(sub, _load(name))
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line. ``bulk COMMAND ...`` imports that command only and
    lets options and positionals mix (``bulk slice 13h +5m -w out.pcap in.pcap``)."""
    if argv and argv[0] in COMMANDS:
        parser = build_parser(only=argv[0])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        cmd_parser: argparse.ArgumentParser = sub.choices[argv[0]]
        if "--" in argv[1:]:
            # Intermixed parsing drops what follows '--' ('bulk info -- -x.pcap').
            return cmd_parser.parse_args(argv[1:])
        try:
            return cmd_parser.parse_intermixed_args(argv[1:])
        except TypeError:  # a parser feature intermixed parsing does not support
            return cmd_parser.parse_args(argv[1:])
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    status = _run(list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        # Run as the program (the console script, python -m bulk), the process ends
        # next: the interpreter's last garbage collections would walk every object
        # left (modules, argparse, typing...), which bulk no longer needs (its files
        # are closed by then). Frozen, they are skipped: 7.5 -> 2.6 ms from here to
        # the end of `bulk slice`, whose whole run can take 50 ms.
        import gc  # noqa: PLC0415

        gc.freeze()
    return status


def _run(argv: list[str]) -> int:
    args = parse(argv)
    try:
        status: int = args.func(args)
    except BulkError as exc:
        sys.stderr.write(f"bulk {args.command}: {one_line(str(exc))}\n")
        return exc.exit_status
    except KeyboardInterrupt:
        sys.stderr.write(f"bulk {args.command}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `bulk slice ... | head`): not an error of ours.
        _silence_stdout()
        return 0
    return status


def one_line(message: str) -> str:
    """A message quoting user input (a file name, a filter) kept on one line."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _silence_stdout() -> None:
    """After EPIPE, stop Python from failing again while flushing stdout at exit."""

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
