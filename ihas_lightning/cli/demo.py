"""``ihas demo``: the README's first command: ``ihas run`` end to end on the bundled synthetic data.

The synthetic generator plants two user segments: one whose clicks depend on fields C1 and C2 through a
rank-8 interaction, one that depends on C3 only. The search should give them different dimensions.

It runs with ``ihas run``'s own defaults, the one set used for every data set (the quality benchmark too):
whatever must adapt to the data (the budget fit, field-wise or instance-wise groups, the retraining's kept
epoch, the model the run ships) is chosen inside the run on validation data. Only the data's size (300,000
synthetic rows) and the run folder are the demo's. See docs/design.md#8-synthetic-data-and-the-demo.
"""

from __future__ import annotations

import argparse

from .pipeline import add_run_arguments, run_command

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="search -> cluster -> retrain on the bundled synthetic data",
                                   description=__doc__)
    add_run_arguments(parser, epochs=4)
    # `ihas run`'s own defaults (one set for every data set); only the data's size and the folder differ
    parser.set_defaults(handler=run_command, out="runs/demo", rows=300_000, prefix=True, quiet=False)
