"""``ihas demo``: the README's first command, on the bundled synthetic data."""

from __future__ import annotations

import argparse

from .common import add_data_arguments, add_trainer_arguments
from .train import run_train

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="train on the bundled synthetic data and print a summary",
                                   description=__doc__)
    add_data_arguments(parser)
    add_trainer_arguments(parser, epochs=3)
    parser.set_defaults(handler=run_train, out="runs/demo")
