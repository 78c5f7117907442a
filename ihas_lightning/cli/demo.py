"""``ihas demo``: the README's first command: ``ihas run`` end to end on the bundled synthetic data.

The synthetic generator plants two user segments: one whose clicks depend on fields C1 and C2 through a
rank-8 interaction, one that depends on C3 only. The search should give them different dimensions.

Its defaults were chosen on validation AUC (synthetic, DeepFM, seed 0): nested gates (retraining gives each
group the *first* d[c, f] columns), 4 retraining epochs at lr 3e-3, a search budget of 0.6
(``fit_dims_to_budget`` then caps the stored tables at 60% of the uniform model's parameters), and tables
narrowed by measured validation logloss (``--budget-fit loss``). See docs/design.md#8-synthetic-data-and-the-demo.
"""

from __future__ import annotations

import argparse

from .pipeline import add_run_arguments, run_command

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="search -> cluster -> retrain on the bundled synthetic data",
                                   description=__doc__)
    add_run_arguments(parser, epochs=4)
    parser.set_defaults(handler=run_command, out="runs/demo", rows=300_000, batch_size=2048, lr=3e-3,
                        prefix=True, budget=0.6, retrain_epochs=4, retrain_lr=3e-3, quiet=False)
