"""``ihas search``: the iHAS search stage; writes ``OUT/search/`` (checkpoint, TensorBoard, metrics.json)."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..callbacks import (BestSearchedCheckpoint, GateStatisticsLogger, RegularizerWarmup, TemperatureAnnealing,
                         load_callbacks, preset_names)
from ..modules import SearchModule
from .common import (add_data_arguments, add_trainer_arguments, datamodule_from_args, make_trainer, parse_widths,
                     print_table, write_json)

__all__ = ["register", "add_search_arguments", "run_search", "search_metrics", "searched_checkpoint",
           "unsettled_gates"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("search", help="iHAS search stage: instance-wise gates on a backbone",
                                   description=__doc__)
    add_data_arguments(parser)
    add_trainer_arguments(parser, epochs=5)
    add_search_arguments(parser)
    parser.set_defaults(handler=run_search)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search")
    group.add_argument("--budget", type=float, default=0.5,
                       help="target share of the uniform model's embedding parameters (default 0.5)")
    group.add_argument("--sparsity-weight", type=float, default=None,
                       help="a fixed sparsity multiplier instead of a budget")
    group.add_argument("--relaxation", choices=["hard_concrete", "gaussian"], default="hard_concrete")
    group.add_argument("--prefix", action=argparse.BooleanOptionalAction, default=False,
                       help="nested gates: a field's mask is a dimension size (default for `ihas run`, whose "
                            "groups keep each table's first columns)")
    group.add_argument("--min-dim", type=int, default=2, help="dimensions every field keeps (0 drops fields)")
    group.add_argument("--polarization", type=float, default=0.1, help="bi-polarisation weight")
    group.add_argument("--gate-lr", type=float, default=3e-3)
    group.add_argument("--warmup-epochs", type=int, default=1, help="plain-backbone epochs before the gates")
    group.add_argument("--init-from", default=None,
                       help="start the backbone from a checkpoint, e.g. a trained supernet's last.ckpt")
    group.add_argument("--search-checkpoint", choices=["best", "last"], default="best",
                       help="which searched epoch the later stages read: 'best' validation AUC among the gated "
                            "epochs (default; CTR models overfit after an epoch or two) or the 'last'")
    group.add_argument("--config", default=None,
                       help=f"callbacks: a packaged preset ({', '.join(preset_names())}) or a YAML file of "
                            "class_path/init_args entries; default: annealing, warm-up, statistics")


def gate_options(args: argparse.Namespace) -> dict:
    budget = None if args.sparsity_weight is not None else args.budget
    return {"budget": budget, "sparsity_weight": args.sparsity_weight or 0.0, "relaxation": args.relaxation,
            "prefix": args.prefix, "min_dim": args.min_dim, "allow_drop_field": args.min_dim == 0,
            "polarization_weight": args.polarization}


def search_metrics(module: SearchModule, trainer: pl.Trainer) -> dict:
    summary = module.last_val_summary or {}
    return {
        "val_auc": float(trainer.callback_metrics.get("val_auc", float("nan"))),
        "val_logloss": float(trainer.callback_metrics.get("val_logloss", float("nan"))),
        "mean_active_dims": {"overall": summary.get("mean_active_dims"),
                             "per_field": summary.get("mean_active_dims_per_field", {})},
        "distinct_masks": summary.get("distinct_masks"),
        "decided_share": summary.get("decided_share"),
        "expected_param_share": summary.get("expected_param_share"),
        "dim": module.hparams.dim, "backbone": module.hparams.backbone,
    }


def unsettled_gates(metrics: dict, budget: float | None, min_decided: float = 0.5,
                    budget_slack: float = 0.1) -> str | None:
    """Why the kept search epoch's gates tell little about the samples, or None when they settled.

    On small data the best validation epoch can come before the gates have learned anything: on Criteo 10k
    (8,000 training rows, 31 steps an epoch) every kept epoch had fewer than a third of its gates decided and
    an expected parameter share of 1.0 at a budget of 0.6, so the clustering fitted the budget from nearly
    uniform gates (one group held 94-100% of the rows).
    """
    decided, share = metrics.get("decided_share"), metrics.get("expected_param_share")
    reasons = []
    if decided is not None and decided < min_decided:
        reasons.append(f"only {decided:.0%} of its gates are decided (near 0 or 1)")
    if budget is not None and share is not None and share > budget + budget_slack:
        reasons.append(f"its expected parameter share is {share:.2f} against a budget of {budget:.2f}")
    if not reasons:
        return None
    return (f"the search kept epoch {metrics.get('epoch')}, where {' and '.join(reasons)}: the clustering will "
            "fit the budget from gates that barely differ between samples. More gated steps (--epochs, a smaller "
            "--batch-size), a larger --gate-lr, or --search-checkpoint last let the gates settle; compare the "
            "retrained validation AUC, since on small data settled gates can score lower.")


def searched_checkpoint(stage_dir: str | Path) -> Path:
    """The search checkpoint the later stages read: ``best.ckpt`` when the search kept one, else ``last.ckpt``."""
    checkpoints = Path(stage_dir) / "checkpoints"
    best = checkpoints / "best.ckpt"
    return best if best.exists() else checkpoints / "last.ckpt"


def run_search(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    pl.seed_everything(args.seed, workers=True)
    stage_dir = Path(args.out) / "search"
    dm = datamodule_from_args(args)
    module = SearchModule(dm.schema, dm.vocab_sizes, backbone=args.backbone, dim=args.dim,
                          dnn_hidden_units=parse_widths(args.dnn), lr=args.lr, gate_lr=args.gate_lr,
                          warmup_epochs=args.warmup_epochs, gate=gate_options(args), seed=args.seed)
    if getattr(args, "init_from", None) and not (stage_dir / "checkpoints" / "last.ckpt").exists():
        module.init_backbone_from(args.init_from)
    steps_per_epoch = len(dm.stream("train"))
    gated_steps = max(1, (args.epochs - args.warmup_epochs) * steps_per_epoch)
    callbacks = load_callbacks(args.config) if args.config else [
        TemperatureAnnealing(steps=max(1, int(0.8 * gated_steps))),
        RegularizerWarmup(steps=max(1, gated_steps // 5)), GateStatisticsLogger()]
    keep_best = getattr(args, "search_checkpoint", "last") == "best"
    if keep_best:
        callbacks = [BestSearchedCheckpoint(stage_dir / "checkpoints"), *callbacks]
    trainer = make_trainer(args, stage_dir, callbacks=callbacks, monitor=None)
    last = stage_dir / "checkpoints" / "last.ckpt"
    trainer.fit(module, dm, ckpt_path=str(last) if last.exists() else None)
    kept = searched_checkpoint(stage_dir)
    if kept != last:
        # The metrics (and the gate statistics) describe the kept epoch, the one the later stages read.
        trainer.validate(module, dm, ckpt_path=str(kept), verbose=False)
    metrics = {**search_metrics(module, trainer), "checkpoint": kept.name,
               "epoch": int(torch.load(kept, map_location="cpu", weights_only=False)["epoch"]),
               "seconds": time.perf_counter() - start}
    unsettled = unsettled_gates(metrics, gate_options(args)["budget"])
    metrics["gates_settled"] = unsettled is None
    write_json(stage_dir / "metrics.json", metrics)
    if unsettled:
        warnings.warn(unsettled, stacklevel=1)
    per_field = metrics["mean_active_dims"]["per_field"]
    print_table(f"ihas search: {args.backbone} on {args.data}", ["metric", "value"], [
        ["val AUC", metrics["val_auc"]], ["mean active dims", metrics["mean_active_dims"]["overall"]],
        ["expected parameter share", metrics["expected_param_share"]], ["distinct masks", metrics["distinct_masks"]],
        ["decided share", metrics["decided_share"]],
        *[[f"  active dims {name}", value] for name, value in per_field.items()],
    ])
    print(f"checkpoint: {kept}   TensorBoard: tensorboard --logdir {stage_dir}")
    return metrics
