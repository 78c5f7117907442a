"""``ihas supernet`` trains a weight-sharing supernet; ``ihas subnet`` scores one of its sub-architectures.

``ihas supernet --out DIR`` writes ``DIR/supernet/``: ``checkpoints/`` (``last.ckpt`` is the supernet),
TensorBoard logs, ``metrics.json``, ``data.json`` (the data options, so that ``ihas subnet --run DIR``
rebuilds the same splits) and ``supernet.json`` (the search space and sampler seed).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl

from ..callbacks.supernet_sampler import SupernetSampler
from ..data.config import DataConfig
from ..modules.supernet_module import SupernetModule
from ..training import datamodule_from_config, make_trainer, write_json
from .common import add_data_arguments, add_trainer_arguments, print_table, run_config_from_args

__all__ = ["register", "run_supernet", "run_subnet", "DATA_OPTIONS"]

DATA_OPTIONS = ("data", "format", "schema", "test", "rows", "min_count", "batch_size", "seed", "cache_dir")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("supernet", help="train a weight-sharing supernet over embedding dims and "
                                   "DNN widths (NASRec-style)", description=__doc__)
    add_data_arguments(parser)
    add_trainer_arguments(parser)
    group = parser.add_argument_group("supernet")
    group.add_argument("--dim-choices", default="2,4,8,16", help="candidate per-field dims (<= --dim)")
    group.add_argument("--width-choices", default="0.25,0.5,0.75,1.0", help="candidate shares of each DNN layer")
    group.add_argument("--warmup-steps", type=int, default=None,
                       help="full-network probability decays from 1 to 0 over these steps (default: one epoch)")
    group.add_argument("--per-sample", action="store_true", help="one sub-architecture per sample, not per batch")
    group.add_argument("--no-widths", action="store_true", help="keep DNN widths full; sample dims only")
    parser.set_defaults(handler=run_supernet)

    sub = subparsers.add_parser("subnet", help="score one sub-architecture of a trained supernet with inherited "
                                "weights", description=__doc__)
    sub.add_argument("--run", required=True, help="run directory given to `ihas supernet --out`")
    sub.add_argument("--dims", default="", help="FIELD=D,... (fields not named keep the full dimension)")
    sub.add_argument("--widths", default=None, help="DNN widths: shares (0.5,0.5) or unit counts (128,64)")
    sub.add_argument("--finetune-steps", type=int, default=0, help="post-training fine-tune of the last layer")
    sub.add_argument("--checkpoint", default=None, help="default: RUN/supernet/checkpoints/last.ckpt")
    sub.add_argument("--json", default=None, help="also write the score to this JSON file")
    sub.set_defaults(handler=run_subnet)


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got '{text}'") from None


def run_supernet(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    pl.seed_everything(args.seed, workers=True)
    stage = Path(args.out) / "supernet"
    config = run_config_from_args(args)
    dm = datamodule_from_config(config.data, config.trainer.threads)
    hidden = config.model.dnn_hidden_units
    dims = tuple(int(d) for d in _floats(args.dim_choices, "--dim-choices"))
    steps_per_epoch = math.ceil(len(dm.split("train")) / dm.batch_size)
    warmup = steps_per_epoch if args.warmup_steps is None else args.warmup_steps
    sampler = SupernetSampler(dim_choices=dims, width_choices=_floats(args.width_choices, "--width-choices"),
                              per_sample=args.per_sample, warmup_steps=warmup, sample_widths=not args.no_widths,
                              seed=args.seed)
    if max(sampler.config.dim_choices) > args.dim:
        raise ValueError(f"--dim-choices {args.dim_choices} exceed --dim {args.dim}")
    module = SupernetModule(dm.schema, dm.vocab_sizes, backbone=args.backbone, dim=args.dim,
                            dnn_hidden_units=hidden, lr=args.lr, seed=args.seed)
    write_json(stage / "data.json", {k: getattr(args, k) for k in DATA_OPTIONS})
    write_json(stage / "supernet.json", {"sampler": sampler.config.to_dict(), "seed": args.seed,
                                         "backbone": args.backbone, "dim": args.dim, "dnn": list(hidden)})
    trainer = make_trainer(config.trainer, stage, callbacks=[sampler])
    last = stage / "checkpoints" / "last.ckpt"
    trainer.fit(module, dm, ckpt_path=str(last) if last.exists() else None)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    test = trainer.test(module, dm, verbose=False)[0]  # the supernet as trained (last weights), full network
    metrics = {
        "val_auc": val.get("val_auc", float("nan")), "val_logloss": val.get("val_logloss", float("nan")),
        "test_auc": float(test["test_auc"]), "test_logloss": float(test["test_logloss"]),
        "embedding_params": module.backbone.embedding_params, "sampled_steps": sampler.step,
        "backbone": args.backbone, "dim": args.dim, "dnn": list(hidden), "supernet": sampler.config.to_dict(),
        "epochs": args.epochs, "seed": args.seed, "rows_train": len(dm.split("train")), "data": args.data,
        "format": dm.format, "checkpoint": str(last), "seconds": time.perf_counter() - start,
    }
    write_json(stage / "metrics.json", metrics)
    print_table(f"ihas supernet: {args.backbone} dim {args.dim} on {args.data}", ["metric", "value"], [
        ["val AUC (full network)", metrics["val_auc"]], ["test AUC (full network)", metrics["test_auc"]],
        ["sampled steps", metrics["sampled_steps"]], ["embedding parameters", metrics["embedding_params"]],
    ])
    print(f"supernet: {stage}   score a sub-architecture: ihas subnet --run {args.out} --dims FIELD=D,...")
    return metrics


def run_subnet(args: argparse.Namespace) -> dict:
    stage = Path(args.run) / "supernet"
    options_path = stage / "data.json"
    if not options_path.exists():
        raise FileNotFoundError(f"{options_path} not found: is '{args.run}' a run directory of `ihas supernet`?")
    checkpoint = Path(args.checkpoint) if args.checkpoint else stage / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"supernet checkpoint {checkpoint} not found")
    dm = datamodule_from_config(DataConfig(**json.loads(options_path.read_text())))
    module = SupernetModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    subarch = module.parse_subarch(args.dims, args.widths)
    score = module.evaluate_subnet(subarch, dm, finetune_steps=args.finetune_steps)
    result = {**score.to_dict(), "run": str(args.run), "checkpoint": str(checkpoint)}
    if args.json:
        write_json(Path(args.json), result)
    print_table(f"ihas subnet: {subarch}", ["metric", "value"], [
        ["val AUC", score.auc], ["val logloss", score.logloss], ["embedding parameters", score.embedding_params],
        ["embedding share", score.embedding_share],
        ["FLOPs per sample", "n/a" if score.flops_per_sample is None else f"{score.flops_per_sample:,.0f}"],
        ["fine-tune steps", score.finetune_steps], ["seconds", score.seconds],
    ])
    return result
