"""``ihas run`` (search -> cluster -> retrain + baselines), and ``ihas cluster`` / ``ihas retrain`` on a run."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..pipeline import RunDirectory, run_pipeline, stage_cluster, stage_retrain
from ..modules.retrain_module import ROUTERS
from ..pipeline.selection import selection_message
from ..run_config import BUDGET_FITS
from ..flops import format_flops
from ..footprint_dims import width_label
from .common import add_data_arguments, add_trainer_arguments, print_table, run_config_from_args
from .search import add_search_arguments, print_search

__all__ = ["register", "run_command", "add_pipeline_arguments", "add_run_arguments"]


GROUP_DENSE_HELP = ("retrain with group-specific dense layers: every group gets its own copy of the DNN, cross, "
                    "output and other non-embedding layers (started from the searched ones; the embedding tables "
                    "stay shared), so groups whose samples differ can fit their own feature interactions; costs "
                    "K times the dense parameters")


ROUTER_HELP = ("how the retrained model routes a sample to its group: 'linear' (default) maps every field's first "
               "min_dim columns to the groups, fitted to the searched routing on training rows (a few hundred "
               "numbers); 'gates' keeps the searched gate network and K*F*D centroids (larger than the tables "
               "on small data); benchmarks/results/router.md compares them")


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster and retrain")
    group.add_argument("--k", type=int, default=4, help="number of groups; 0 chooses it on validation data")
    group.add_argument("--candidate-dims", default="0,2,4,6,8,12,16", help="dimensions a group's field may get")
    group.add_argument("--budget-fit", choices=BUDGET_FITS, default="auto",
                       help="how the stored tables are narrowed to the search's --budget: 'loss' narrows the field "
                            "that costs the searched model the least validation logloss per parameter saved, "
                            "'gates' the one whose members lose the fewest open gates; 'auto' (default) fits both "
                            "and keeps the one whose narrowed searched model has the higher validation AUC")
    group.add_argument("--retrain-epochs", type=int, default=4)
    group.add_argument("--retrain-lr", type=float, default=1e-3)
    group.add_argument("--baseline-epochs", type=int, default=None,
                       help="epochs of the uniform baselines (default: search + retrain epochs)")
    group.add_argument("--no-matched-baseline", action="store_true",
                       help="skip the baseline at iHAS's footprint (tables + router; every field d or d+1 columns)")
    group.add_argument("--mde-baseline", action="store_true",
                       help="also train mixed-dimension embeddings (Ginart et al. 2019: a field's width proportional "
                            "to vocabulary^-alpha) at iHAS's footprint, alpha chosen on validation AUC "
                            "(DIR/baseline_mde/, one training per alpha)")
    group.add_argument("--fieldwise", action=argparse.BooleanOptionalAction, default=True,
                       help="also cluster the search with one group and retrain it: field-wise dimensions, no "
                            "router (DIR/fieldwise/); the run keeps it when it beats iHAS on validation "
                            "(default: on)")
    group.add_argument("--group-dense", action="store_true", help=GROUP_DENSE_HELP)
    group.add_argument("--router", choices=ROUTERS, default="linear", help=ROUTER_HELP)
    group.add_argument("--retrain-init-from", default=None, metavar="CKPT",
                       help="start the retraining's tables and dense layers from this checkpoint of the run's "
                            "backbone (a trained supernet: DIR/supernet/checkpoints/last.ckpt) instead of the "
                            "search; the router stays the search's (see the README for when it helps)")
    group.add_argument("--separate", action="store_true",
                       help="also train the separate-models variant: one model per group from scratch on its own "
                            "samples (DIR/separate/)")


def add_run_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    """Every option of a whole run: data, training, search, clustering and retraining."""
    add_data_arguments(parser)
    add_trainer_arguments(parser, epochs=epochs)
    add_search_arguments(parser)
    add_pipeline_arguments(parser)
    parser.add_argument("--restart", action="store_true",
                        help="clear the stages of a run already in --out and start over (without it, a folder "
                             "holding a run with other data, model or training options is refused)")


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="search -> cluster -> retrain, and the uniform baselines",
                                description=__doc__)
    add_run_arguments(run, epochs=4)
    # Retraining keeps each table's first d[c, f] columns, so the search learns prefixes (nested gates):
    # see docs/design.md#21-search-gates.
    run.set_defaults(handler=run_command, prefix=True)
    for name, handler, text in (("cluster", _run_cluster, "cluster the searched masks of a run"),
                                ("retrain", _run_retrain, "retrain a run's groups (optionally on another backbone)")):
        sub = subparsers.add_parser(name, help=text)
        sub.add_argument("--run", required=True, help="run directory made by `ihas run`")
        sub.add_argument("--quiet", action="store_true", default=None,
                         help="no progress bar or Lightning banners (default: as the run was started)")
        if name == "retrain":
            sub.add_argument("--backbone", default=None, help="retrain on another DeepCTR-Torch backbone")
            sub.add_argument("--group-dense", action="store_true", default=None,
                             help=GROUP_DENSE_HELP + " (default: as the run was started)")
            sub.add_argument("--router", choices=ROUTERS, default=None,
                             help=ROUTER_HELP + " (default: as the run was started; another router retrains into "
                                  "DIR/retrain_<router>)")
        sub.set_defaults(handler=handler)


def run_command(args: argparse.Namespace) -> dict:
    """``ihas run`` (and ``ihas demo``): the whole pipeline, printing the search's table and the summary."""
    config = run_config_from_args(args)
    metrics = run_pipeline(config, on_stage_done=lambda name, stage: print_search(stage, config),
                           restart=args.restart)
    _print_summary(metrics, RunDirectory(config.out))
    return metrics


def _run_cluster(args: argparse.Namespace) -> dict:
    run = RunDirectory(args.run)
    config = run.load_config(quiet=args.quiet)
    with run.lock("ihas cluster"):
        metrics = stage_cluster(run, config)
    print(f"{metrics['k']} groups, sizes {metrics['group_sizes']}; dims: {metrics['dims']}")
    return metrics


def _run_retrain(args: argparse.Namespace) -> dict:
    run = RunDirectory(args.run)
    config = run.load_config(quiet=args.quiet)
    stage = "retrain" if args.backbone in (None, config.model.backbone) else f"retrain_{args.backbone}"
    if args.group_dense and not config.retrain.group_dense:
        config = replace(config, retrain=replace(config.retrain, group_dense=True))  # a stage beside the run's
        stage += "_group_dense"
    if args.router not in (None, config.retrain.router):
        config = replace(config, retrain=replace(config.retrain, router=args.router))
        stage += f"_{args.router}"
    with run.lock("ihas retrain"):
        metrics = stage_retrain(run, config, backbone=args.backbone, stage=stage)
    print(f"retrained on {metrics['backbone']}: test AUC {metrics['test_auc']:.4f}, "
          f"embedding parameters {metrics['embedding_params']:,}")
    return metrics


def _print_summary(metrics: dict, run: RunDirectory) -> None:
    rows = [["uniform dim " + str(metrics["baseline"]["dim"]), *_row(metrics["baseline"])]]
    if "baseline_matched" in metrics:
        rows.append([width_label(metrics["baseline_matched"]) + " (matched)", *_row(metrics["baseline_matched"])])
    if "baseline_mde" in metrics:
        mde = metrics["baseline_mde"]
        rows.append([f"mixed dims, alpha {mde['kept_alpha']:g} ({width_label(mde)})", *_row(mde)])
    if "fieldwise" in metrics:
        rows.append(["field-wise (1 group)", *_row(metrics["fieldwise"])])
    rows.append([f"iHAS ({metrics['ihas']['groups']} groups)", *_row(metrics["ihas"])])
    if "ihas_separate" in metrics:
        rows.append([f"iHAS separate ({metrics['ihas_separate']['groups']} models)", *_row(metrics["ihas_separate"])])
    print_table(f"ihas run: {metrics['backbone']} on {metrics['dataset']}",
                ["model", "test AUC", "logloss", "tables", "router", "footprint",
                 "FLOPs"], rows)
    if "selection" in metrics:
        print(selection_message(metrics["selection"]))
    print(f"run: {run.root}   metrics: {run.root / 'metrics.json'}   report: ihas report --run {run.root}\n"
          f"TensorBoard: tensorboard --logdir {run.root}")


def _row(entry: dict) -> list:
    """Test figures and the whole served size (footprint = tables + router; older runs lack the router count)."""
    router = entry.get("router_params")
    footprint = entry.get("footprint_params")
    return [entry["test_auc"], entry["test_logloss"], int(entry["embedding_params"]),
            "n/a" if router is None else int(router), "n/a" if footprint is None else int(footprint),
            format_flops(entry.get("flops_per_sample"))]
