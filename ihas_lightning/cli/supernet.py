"""``ihas supernet`` trains a weight-sharing supernet; ``ihas subnet`` scores one of its sub-architectures.

``ihas supernet --out DIR`` writes ``DIR/supernet/``: ``checkpoints/`` (``last.ckpt`` is the supernet),
TensorBoard logs, ``metrics.json``, ``data.json`` (the data options, so that ``ihas subnet --run DIR``
rebuilds the same splits) and ``supernet.json`` (the search space and sampler seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..modules.supernet_module import FINETUNE_SCOPES
from ..pipeline.supernet import score_subnet, train_supernet
from ..subarchitecture import SAMPLINGS, SupernetConfig
from ..training import write_json
from .common import (add_data_arguments, add_scoring_arguments, add_trainer_arguments, print_table,
                     run_config_from_args)

__all__ = ["SUPERNET_LR", "register", "run_supernet", "run_subnet"]


SUPERNET_LR = 1e-2
"""``ihas supernet``'s default learning rate (the other commands': 1e-3): the rate the ranking benchmark trains its
supernets at. At 1e-3, scored with a fine-tune at the same rate as ``ihas pim`` does, a sandwich-rule supernet ranked
the development sets far worse (fine-tuned overall tau 0.22-0.42 against 0.65-0.87; docs/supernet_ranking.md)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("supernet", help="train a weight-sharing supernet over embedding dims and "
                                   "DNN widths (NASRec-style)", description=__doc__)
    add_data_arguments(parser)
    add_trainer_arguments(parser)
    parser.set_defaults(lr=SUPERNET_LR)
    group = parser.add_argument_group("supernet")
    group.add_argument("--dim-choices", default="2,4,8,16", help="candidate per-field dims (<= --dim)")
    group.add_argument("--width-choices", default="0.25,0.5,0.75,1.0", help="candidate shares of each DNN layer")
    group.add_argument("--warmup-steps", type=int, default=None,
                       help="full-network probability decays from 1 to 0 over these steps (default: one epoch, "
                            "none with --sandwich, which trains the full network every step)")
    group.add_argument("--per-sample", action="store_true", help="one sub-architecture per sample, not per batch")
    group.add_argument("--no-widths", action="store_true", help="keep DNN widths full; sample dims only")
    group.add_argument("--sandwich", type=int, default=2,
                       help="sandwich rule: train the largest, the smallest and this many sampled sub-architectures "
                            "per step (default 2, what ranked candidates best in benchmarks/results/"
                            "supernet_rank.md; 0: one sampled per step)")
    group.add_argument("--distill", type=float, default=0.0,
                       help="in-place distillation weight in [0, 1] from the largest sub-architecture (needs "
                            "--sandwich)")
    group.add_argument("--sampling", choices=SAMPLINGS, default="uniform",
                       help="capped: a dim cap per step, then each field's dim up to it (covers small budgets)")
    parser.add_argument("--restart", action="store_true",
                        help="clear OUT/supernet/ and start over (without it, a supernet trained there with other "
                             "settings is refused; the same settings resume it)")
    group.add_argument("--no-freeze-masked", action="store_true",
                       help="let Adam move what a step's sub-architecture masks by its stale momentum (the "
                            "behaviour before the optimiser froze it)")
    parser.set_defaults(handler=run_supernet)

    sub = subparsers.add_parser("subnet", help="score one sub-architecture of a trained supernet with its "
                                "inherited weights, after a first-order refit and a short fine-tune",
                                description=__doc__)
    sub.add_argument("--run", required=True, help="run directory given to `ihas supernet --out`")
    sub.add_argument("--dims", default="", help="FIELD=D,... (fields not named keep the full dimension)")
    sub.add_argument("--widths", default=None, help="DNN widths: shares (0.5,0.5) or unit counts (128,64)")
    add_scoring_arguments(sub)
    sub.add_argument("--finetune-scope", choices=FINETUNE_SCOPES, default="all",
                     help="what the fine-tune trains: every parameter the sub-architecture uses (default) or the "
                          "last layer (NASRec)")
    sub.add_argument("--checkpoint", default=None, help="default: RUN/supernet/checkpoints/last.ckpt")
    sub.add_argument("--json", default=None, help="also write the score to this JSON file")
    sub.set_defaults(handler=run_subnet)


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got '{text}'") from None


def run_supernet(args: argparse.Namespace) -> dict:
    space = SupernetConfig(dim_choices=tuple(int(d) for d in _floats(args.dim_choices, "--dim-choices")),
                           width_choices=_floats(args.width_choices, "--width-choices"),
                           per_sample=args.per_sample, sample_widths=not args.no_widths, sandwich=args.sandwich,
                           distill=args.distill, sampling=args.sampling)
    metrics = train_supernet(args.out, run_config_from_args(args), space, warmup_steps=args.warmup_steps,
                             freeze_masked=not args.no_freeze_masked, restart=args.restart)
    print_table(f"ihas supernet: {args.backbone} dim {args.dim} on {args.data}", ["metric", "value"], [
        ["val AUC (full network)", metrics["val_auc"]], ["test AUC (full network)", metrics["test_auc"]],
        ["sampled steps", metrics["sampled_steps"]], ["embedding parameters", metrics["embedding_params"]],
    ])
    print(f"supernet: {args.out}/supernet   score a sub-architecture: ihas subnet --run {args.out} --dims FIELD=D,...")
    return metrics


def run_subnet(args: argparse.Namespace) -> dict:
    result = score_subnet(args.run, args.dims, args.widths, args.finetune_steps, args.checkpoint,
                          finetune_scope=args.finetune_scope, finetune_lr=args.finetune_lr,
                          refit_sweeps=args.refit_sweeps, refit_prior=args.refit_prior, refit_rows=args.refit_rows,
                          device=args.device)
    if args.json:
        write_json(Path(args.json), result)
    flops = result["flops_per_sample"]
    print_table(f"ihas subnet: {result['subarchitecture']}", ["metric", "value"], [
        ["val AUC", result["auc"]], ["val logloss", result["logloss"]],
        ["embedding parameters", result["embedding_params"]], ["embedding share", result["embedding_share"]],
        ["FLOPs per sample", "n/a" if flops is None else f"{flops:,.0f}"],
        ["first-order refit sweeps", result["refit_sweeps"]], ["first-order refit rows", result["refit_rows"]],
        ["fine-tune steps", result["finetune_steps"]], ["fine-tune scope", result["finetune_scope"] or "-"],
        ["device", result["device"]], ["seconds", result["seconds"]],
    ])
    return result
