"""``--config FILE.yaml`` and ``--print-config`` on every ``ihas`` command, as LightningCLI has them.

``ihas CMD ... --print-config`` prints the command's whole resolved configuration as YAML and exits without
running anything; ``ihas CMD --config FILE.yaml ...`` reads such a file (or any part of it), and a flag given on
the command line overrides the file's value, wherever it stands. A command whose options make a
:class:`~ihas_lightning.run_config.RunConfig` (:data:`RUN_CONFIG_COMMANDS`) prints it nested, as ``run.json``
holds it, and also reads its options by name (``dim: 8``; see :mod:`.config_fields`); the other commands print
and read their options by name (``--finetune-steps`` is ``finetune_steps``).

A config file is data: it is read with ``yaml.safe_load`` (no tags, no class paths, nothing imported), and
an unknown key, a value of the wrong type or a file that is not a mapping is refused with one line naming
the key and the file (exit code 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import config_fields

__all__ = ["CONFIG_DESTS", "RUN_CONFIG_COMMANDS", "add_config_arguments", "apply_config_file", "config_yaml",
           "parse_command_line", "read_config_file"]

RUN_CONFIG_COMMANDS = frozenset({"run", "demo", "search", "train", "supernet"})
"""The commands whose options make a ``RunConfig`` (``common.run_config_from_args``)."""

CONFIG_DESTS = frozenset({"config_file", "print_config", "config_fields"})
"""What the options of this module (and the fields a file sets without an option) are stored as."""

# Not settings: argparse's help, this module's own options, and `ihas run --restart`, which clears a run's
# stages: a file that said so would clear them at every rerun.
_NOT_SETTINGS = frozenset({"help", "restart", *CONFIG_DESTS})


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--print-config`` on one command's parser."""
    group = parser.add_argument_group("configuration file")
    group.add_argument("--config", dest="config_file", metavar="FILE.yaml", default=None,
                       help="read this command's settings from a YAML file (as --print-config writes it); flags "
                            "given on the command line override the file's values")
    group.add_argument("--print-config", action="store_true",
                       help="print this command's full configuration as YAML and exit without running")


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _settings(command: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in command._actions if a.dest not in _NOT_SETTINGS and a.option_strings]


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse's own parse of ``argv``; with ``--config`` or ``--print-config`` in it, the required options are
    left to :func:`apply_config_file` (the file may give them, ``--print-config`` prints them as null)."""
    tokens = sys.argv[1:] if argv is None else argv
    if any(token in ("--config", "--print-config") or token.startswith("--config=") for token in tokens):
        for command in _commands(parser).values():
            for action in command._actions:
                if action.required:
                    action.required, action.ihas_required = False, True
    return parser.parse_args(argv)


def apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                      args: argparse.Namespace) -> argparse.Namespace:
    """``args`` (from :func:`parse_command_line`) with the values of its ``--config`` file under the flags given
    on the command line; then argparse's error for a required option neither gives (unless ``--print-config``).

    The file's values become the command's defaults and ``argv`` is parsed again, so a flag wins whatever its
    place. A ValueError (or OSError) names the file and what is wrong in it.
    """
    command = _commands(parser)[args.command]
    path = args.config_file
    if path is not None:
        values, fields, nested = read_config_file(path, args.command, command)
        command.set_defaults(**values)
        args = parser.parse_args(argv)
        args.config_fields = fields
        if args.command in RUN_CONFIG_COMMANDS:
            from .common import run_config_from_args

            try:
                config = run_config_from_args(args)
            except ValueError as error:
                raise ValueError(f"{error} (with the settings of {path})") from None
            overridden = {a.dest for a in _settings(command) if getattr(args, a.dest) != command.get_default(a.dest)}
            config_fields.check_fields(config, nested, overridden, path)
    missing = [a for a in command._actions if getattr(a, "ihas_required", False) and getattr(args, a.dest) is None]
    if missing and not args.print_config:
        command.error("the following arguments are required: " + ", ".join("/".join(a.option_strings)
                                                                              for a in missing))
    return args


def read_config_file(path: str, name: str,
                     command: argparse.ArgumentParser) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The config file ``path`` of command ``name``: ``(options, fields, nested)``: the option values it sets
    (dest -> value, checked against the options' types and choices), the ``RunConfig`` fields it sets that no
    option sets (dotted name -> value), and every ``RunConfig`` field it names (for a RunConfig command)."""
    data = _read_mapping(path, name)
    actions = {a.dest: a for a in _settings(command)}
    if name in RUN_CONFIG_COMMANDS:
        flat, sources, nested = config_fields.read_nested(data, frozenset(actions), path, name)
    else:
        unknown = [key for key in data if key not in actions]
        if unknown:
            raise ValueError(f"{path}: unknown key '{unknown[0]}' for `ihas {name}` (it takes "
                             f"{', '.join(actions)})")
        flat, sources, nested = dict(data), {key: key for key in data}, {}
    values = {dest: config_fields.conform(value, config_fields.option_hint(actions[dest]), sources[dest], path)
              for dest, value in flat.items()}
    fields = {key: value for key, value in nested.items() if key not in config_fields.OPTION_OF}
    return values, fields, nested


def _read_mapping(path: str, name: str) -> dict[str, Any]:
    """The file's YAML mapping; a ValueError for a tag, bad YAML, or anything but a mapping with string keys."""
    file = Path(path)
    if not file.exists() and not file.suffix:
        from ..callbacks.presets import preset_names

        if path in preset_names():       # `--config search` set the search's callbacks before --callbacks
            raise ValueError(f"no config file '{path}': '{path}' is a callbacks preset, given with --callbacks "
                             f"{path} (--config reads a file of settings, see `ihas {name} --print-config`)")
    text = file.read_text()              # OSError (missing, a folder, no permission) as it is
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as error:
        raise ValueError(f"{path}: refusing YAML tag {error.problem.split('tag ')[-1]} (line "
                         f"{error.problem_mark.line + 1 if error.problem_mark else '?'}): a config file holds plain "
                         "values only, nothing is constructed or run from it") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds a mapping of settings to values (see `ihas {name} "
                         f"--print-config`), got {'nothing' if data is None else type(data).__name__}")
    bad = [key for key in data if not isinstance(key, str)]
    if bad:
        raise ValueError(f"{path}: key {bad[0]!r} is not a setting's name")
    return data


def config_yaml(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """What ``--print-config`` prints: the command's resolved configuration, which ``--config`` reads back."""
    command = _commands(parser)[args.command]
    options = {a.dest: getattr(args, a.dest) for a in _settings(command)}
    data: dict[str, Any] = options
    if args.command in RUN_CONFIG_COMMANDS:
        from .common import run_config_from_args

        data = config_fields.nested_config(run_config_from_args(args), options)
    return yaml.dump(_plain(data), Dumper=_Dumper, sort_keys=False)


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that writes a list on one line (``dnn_hidden_units: [256, 128]``)."""


_Dumper.add_representer(list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value,
                                                                              flow_style=True))


def _plain(value: Any) -> Any:
    """Tuples as lists, for ``yaml.safe_dump``."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
