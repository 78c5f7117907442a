"""``ihas transfer``: retrain a run's searched groups on other backbones, against their uniform baselines."""

from __future__ import annotations

import argparse

from .common import print_table

__all__ = ["register", "run_transfer_command"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("transfer", help="the groups and dimensions of a run on other backbones",
                                   description=__doc__)
    parser.add_argument("--run", required=True, help="run directory made by `ihas run`")
    parser.add_argument("--backbones", required=True,
                        help="comma-separated targets, e.g. DCN,DeepFM,xDeepFM,AutoInt,WDL,NFM,PNN")
    parser.add_argument("--seeds", type=int, default=3,
                        help="model seeds 0..N-1 (initialization, batch order); the split stays the run's")
    parser.add_argument("--uniform-dim", type=int, default=None,
                        help="dimension of the uniform baseline (default: the search's; at most that)")
    parser.add_argument("--quiet", action="store_true", default=None,
                        help="no progress bars or Lightning banners (default: as the run was started)")
    parser.set_defaults(handler=run_transfer_command)


def run_transfer_command(args: argparse.Namespace) -> dict:
    from ..experiments.transfer import TransferConfig, run_transfer
    from ..footprint_dims import width_label

    config = TransferConfig(backbones=tuple(b.strip() for b in args.backbones.split(",") if b.strip()),
                            seeds=args.seeds, uniform_dim=args.uniform_dim)
    result = run_transfer(args.run, config, quiet=args.quiet)
    rows = []
    for row in result["rows"]:
        for variant in ("ihas", "uniform", "matched"):
            entry = row[variant]
            std = entry["test_auc"]["std"]
            widths = "per group" if variant == "ihas" else width_label(entry)
            rows.append([row["backbone"], f"{variant} ({widths})",
                         f"{entry['test_auc']['mean']:.4f}" + (f" ± {std:.4f}" if std is not None else ""),
                         entry["test_logloss"]["mean"], entry["footprint_params"]])
    print_table(f"ihas transfer: searched on {result['source_backbone']}, {len(result['model_seeds'])} seed(s); "
                f"every variant from the searched tables, {result['epochs']} epochs",
                ["backbone", "variant", "test AUC", "test logloss", "footprint params"], rows)
    out = f"{result['run']}/transfer"
    print(f"table: {out}/transfer.md   plot: {out}/transfer.png   TensorBoard: tensorboard --logdir {out}")
    return result
