"""The ``ihas`` command: one subcommand per stage, each usable on its own."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config_file import add_config_arguments, apply_config_file, config_yaml, parse_command_line

if TYPE_CHECKING:
    from ..run_config import RunConfig

__all__ = ["main", "build_parser", "parse_run_config", "wants_quiet"]

# Each module defines register(subparsers); a stage's module is imported only when the CLI starts.
_SUBCOMMANDS = ("train", "search", "pipeline", "report", "supernet", "demo", "transfer", "pim", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ihas", description="iHAS embedding-dimension search for DeepCTR-Torch "
                                     "models in PyTorch Lightning")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    for command in subparsers.choices.values():
        add_config_arguments(command)                        # --config FILE.yaml, --print-config: every command
    return parser


def parse_run_config(argv: Sequence[str]) -> RunConfig:
    """The :class:`RunConfig` that ``ihas`` with ``argv`` (e.g. ``["run", "--k", "4"]``) would run, without
    running it: for scripts that keep their settings as command lines and call ``run_pipeline`` themselves."""
    from .common import run_config_from_args

    parser = build_parser()
    return run_config_from_args(apply_config_file(parser, list(argv), parse_command_line(parser, list(argv))))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ihas`` with ``argv``; returns the exit code: 0, 2 after an expected error (one line on stderr,
    see ``errors.EXPECTED_ERRORS``; the traceback with ``--debug``), 130 after Ctrl+C. With ``--print-config``
    the command's configuration is printed instead of run (see :mod:`.config_file`)."""
    parser = build_parser()
    args = parse_command_line(parser, argv)
    from .errors import EXPECTED_ERRORS, INTERRUPTED_EXIT_CODE, describe, interrupt_flag
    from .quiet import quiet_output

    with interrupt_flag() as interrupted:
        try:
            args = apply_config_file(parser, argv, args)
            if args.print_config:
                print(config_yaml(parser, args), end="")
                return 0
            with quiet_output(wants_quiet(args)):
                args.handler(args)
        except (KeyboardInterrupt, SystemExit) as stop:
            if not (isinstance(stop, KeyboardInterrupt) or interrupted()):
                raise
            print(f"ihas {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
            return INTERRUPTED_EXIT_CODE
        except EXPECTED_ERRORS as error:
            if args.debug:
                raise
            print(f"ihas {args.command}: error: {describe(error)}", file=sys.stderr)
            return 2
    return 0


def wants_quiet(args: argparse.Namespace) -> bool:
    """``--quiet``; for a command on an existing run without the flag (``None``), as the run was started."""
    quiet = getattr(args, "quiet", False)
    if quiet is None:
        from ..pipeline import RunDirectory

        try:
            quiet = RunDirectory(args.run).load_config().trainer.quiet
        except (OSError, ValueError):
            quiet = False                                   # the command itself reports the bad or missing run
    return bool(quiet)


if __name__ == "__main__":
    sys.exit(main())
