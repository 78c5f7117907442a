"""Router benchmark (issue 16, item 2): a cheap router against the searched gate router.

Per data set (synthetic 60k, Criteo 10k, Avazu 9k, MovieLens-100K; never MovieLens-1M), backbone (DeepFM, DCN)
and seed (0, 1): one search and clustering with ``ihas run``'s defaults (short: ``--epochs 3
--retrain-epochs 2``), then the retrain stage twice on the same run folder, into ``retrain_gates`` (the
searched gate network + centroids) and ``retrain_linear`` (:class:`~ihas_lightning.modules.LinearRouter` on every
field's first ``min_dim`` columns, fitted to the searched routing on training rows). Reported per cell: the
routers' agreement with the searched routing on validation rows (at the start and at the end of the
retraining, on the model's own tables), their parameters and FLOPs as a share of the served model's footprint
and FLOPs, and the retrained validation AUC (test AUC recorded, not used to choose).

Candidates measured for agreement only (fitted on the searched tables' training rows, scored on validation
rows, no retraining): the linear router on the first 2, 4 and 16 columns; nearest class mean on the first
``min_dim`` columns; a per-id group table for the single best field (its vocabulary in parameters).

Usage:
    python benchmarks/router.py                           # ~15-25 min on 2 busy CPU cores
    python benchmarks/router.py --datasets criteo --seeds 0 --json /tmp/r.json --markdown /tmp/r.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shlex
import statistics
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, write_json, write_markdown_table  # noqa: E402

from ihas_lightning import training  # noqa: E402
from ihas_lightning.cli import parse_run_config  # noqa: E402
from ihas_lightning.clustering import ClusterResult  # noqa: E402
from ihas_lightning.modules import LinearRouter  # noqa: E402
from ihas_lightning.paths import shared_data_dir  # noqa: E402
from ihas_lightning.pipeline import (RunDirectory, load_searched_module, stage_cluster, stage_retrain,  # noqa: E402
                                     stage_search)
from ihas_lightning.pipeline.router_fit import searched_routes  # noqa: E402

DATASETS = {
    "synthetic": ["--data", "synthetic", "--rows", "60000"],
    "criteo": ["--data", "{data}/criteo/train-10k.txt", "--format", "criteo"],
    "avazu": ["--data", "{data}/avazu/train-9k.csv", "--format", "avazu"],
    "movielens-100k": ["--data", "{data}/movielens/ml-100k", "--format", "movielens-100k"],
}
BACKBONES = ("DeepFM", "DCN")
COMMON = ["--epochs", "3", "--retrain-epochs", "2", "--quiet", "--threads", "1"]
ROUTERS = ("gates", "linear")


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@torch.no_grad()
def _prefix_features(search, dm, split: str, columns: int) -> torch.Tensor:
    return torch.cat([search.backbone.field_embeddings(b)[:, :, :columns].flatten(1)
                      for b in dm.stream(split, shuffle=False)])


@torch.no_grad()
def _ids(dm, split: str, field: int) -> torch.Tensor:
    return torch.cat([b["sparse"][:, field] for b in dm.stream(split, shuffle=False)])


def _candidates(run: RunDirectory, config, dm, seed: int) -> dict:
    """Agreement with the searched routing on validation rows of routers fitted on the searched tables."""
    search = load_searched_module(run)
    clusters = ClusterResult.load(run.stage("cluster") / "clusters.json")
    train_y, val_y = (searched_routes(search, clusters, dm, s) for s in ("train", "val"))
    k, fields, dim = clusters.k, len(dm.schema.embedded_fields), search.hparams.dim
    min_dim = max(1, config.gate.min_dim)
    out = {"majority": {"agreement": float((val_y == torch.bincount(train_y, minlength=k).argmax()).float().mean()),
                        "params": 0, "flops": 0.0}}
    for columns in sorted({min_dim, 4, dim}):
        router = LinearRouter(fields, columns, k)
        router.fit(_prefix_features(search, dm, "train", columns), train_y, seed=seed)
        predicted = (_prefix_features(search, dm, "val", columns) @ router.weight.T + router.bias).argmax(1)
        out[f"linear_{columns}"] = {"agreement": float((predicted == val_y).float().mean()),
                                    "params": router.num_params, "flops": router.flops_per_sample}
    x_train, x_val = _prefix_features(search, dm, "train", min_dim), _prefix_features(search, dm, "val", min_dim)
    means = torch.stack([x_train[train_y == c].mean(0) if (train_y == c).any() else torch.full_like(x_train[0], 1e9)
                         for c in range(k)])
    out["nearest_mean"] = {"agreement": float((torch.cdist(x_val, means).argmin(1) == val_y).float().mean()),
                           "params": int(means.numel()), "flops": float(3 * means.numel())}
    best = None
    for f in range(len(dm.schema.sparse)):              # per-id majority group of one field
        vocab = int(dm.vocab_sizes[dm.schema.sparse[f]])
        table = torch.zeros(vocab, k)
        table.index_put_((_ids(dm, "train", f), train_y), torch.ones(len(train_y)), accumulate=True)
        predicted = table.argmax(1)[_ids(dm, "val", f)]
        agreement = float((predicted == val_y).float().mean())
        if best is None or agreement > best["agreement"]:
            best = {"agreement": agreement, "params": vocab, "flops": 0.0, "field": dm.schema.sparse[f]}
    out["id_table_best_field"] = best
    return out


def run_cell(dataset: str, backbone: str, seed: int, root: Path) -> dict:
    argv = ["run", *[a.format(data=shared_data_dir()) for a in DATASETS[dataset]], *COMMON, "--backbone", backbone,
            "--seed", str(seed), "--out", str(root / f"{dataset}_{backbone}_{seed}"), "--router", "gates"]
    config = parse_run_config(argv)
    run = RunDirectory(config.out)
    run.save_config(config)
    if not run.done("search"):
        stage_search(run, config)
    dm = training.datamodule_from_config(config.data, config.trainer.threads)
    cluster = stage_cluster(run, config, dm)
    cell = {"dataset": dataset, "backbone": backbone, "seed": seed, "k": cluster["k"],
            "group_sizes": cluster["group_sizes"], "command": shlex.join(["ihas", *argv]),
            # routing can change the model only where the groups' dimensions differ
            "distinct_group_dims": len({tuple(row) for row in ClusterResult.load(
                run.stage("cluster") / "clusters.json").dims.tolist()})}
    for router in ROUTERS:
        routed = replace(config, retrain=replace(config.retrain, router=router))
        m = stage_retrain(run, routed, dm, stage=f"retrain_{router}")
        cell[router] = {key: m.get(key) for key in (
            "val_auc", "test_auc", "embedding_params", "router_params", "footprint_params", "flops_per_sample",
            "router_flops_per_sample", "router_fit_agreement", "router_agreement_val_start", "router_agreement_val",
            "group_share_test")}
        cell[router]["router_param_share"] = m["router_params"] / m["footprint_params"]
        flops = m.get("flops_per_sample")
        cell[router]["router_flop_share"] = None if not flops else m["router_flops_per_sample"] / flops
    cell["candidates"] = _candidates(run, config, dm, seed)
    return cell


def _summary_rows(cells: list[dict]) -> list[list]:
    rows = []
    for c in cells:
        g, lin = c["gates"], c["linear"]
        rows.append([c["dataset"], c["backbone"], c["seed"], f"{c['k']} ({c['distinct_group_dims']})",
                     f"{g['router_params']:,} ({g['router_param_share']:.0%})",
                     f"{lin['router_params']:,} ({lin['router_param_share']:.1%})",
                     "n/a" if lin["router_flop_share"] is None else f"{lin['router_flop_share']:.1%}",
                     f"{c['candidates']['majority']['agreement']:.3f}",
                     f"{g['router_agreement_val']:.3f}", f"{lin['router_agreement_val_start']:.3f}",
                     f"{lin['router_agreement_val']:.3f}", f"{g['val_auc']:.4f}", f"{lin['val_auc']:.4f}",
                     f"{lin['val_auc'] - g['val_auc']:+.4f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--runs", default="/tmp/ihas_router_bench", help="run folders (kept: a rerun resumes)")
    parser.add_argument("--json", default=str(RESULTS_DIR / "router.json"))
    parser.add_argument("--markdown", default=str(RESULTS_DIR / "router.md"))
    args = parser.parse_args()
    commit = _git_commit()                              # the code the cells run with
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    cells = []
    for dataset in args.datasets:
        for backbone in args.backbones:
            for seed in args.seeds:
                with contextlib.redirect_stdout(io.StringIO()):
                    cells.append(run_cell(dataset, backbone, seed, Path(args.runs)))
                c = cells[-1]
                print(f"{dataset} {backbone} seed {seed}: agreement gates {c['gates']['router_agreement_val']:.3f} "
                      f"linear {c['linear']['router_agreement_val']:.3f}; val AUC gates {c['gates']['val_auc']:.4f} "
                      f"linear {c['linear']['val_auc']:.4f}", flush=True)
    diffs = [c["linear"]["val_auc"] - c["gates"]["val_auc"] for c in cells]
    summary = {"cells": len(cells), "val_auc_linear_minus_gates_mean": statistics.fmean(diffs),
               "val_auc_linear_minus_gates_min": min(diffs), "val_auc_linear_minus_gates_max": max(diffs),
               "linear_router_param_share_max": max(c["linear"]["router_param_share"] for c in cells),
               "linear_router_flop_share_max": max((c["linear"]["router_flop_share"] or 0.0) for c in cells),
               "linear_agreement_val_mean": statistics.fmean(c["linear"]["router_agreement_val"] for c in cells),
               "gates_agreement_val_mean": statistics.fmean(c["gates"]["router_agreement_val"] for c in cells)}
    candidates = sorted(cells[0]["candidates"]) if cells else []
    candidate_rows = [[name, statistics.fmean(c["candidates"][name]["agreement"] for c in cells),
                       min(c["candidates"][name]["agreement"] for c in cells),
                       statistics.fmean(c["candidates"][name]["params"] / c["linear"]["embedding_params"]
                                        for c in cells)] for name in candidates]
    command = shlex.join([sys.executable, *sys.argv])
    write_json(args.json, {"benchmark": "router", "created": now_iso(), "git_commit": commit,
                           "command": command, "settings": COMMON, "summary": summary, "cells": cells,
                           "machine": machine_info()})
    notes = [f"command: `{command}`; git commit {commit}; `ihas run` defaults with {' '.join(COMMON)}.",
             "router params (share of the footprint = tables + that router); linear FLOPs as a share of the served "
             "model's FLOPs per sample (router included).",
             "K (distinct dims): groups, and how many distinct dimension rows they have (1: routing cannot "
             "change the model, so both routers give the same AUC).",
             "largest group: the agreement of sending every row to the largest training group (the floor).",
             "agreement: share of validation rows the router sends to the searched routing's group (clustering of "
             "the searched masks), on the retrained model's own tables; 'start' = before the retraining.",
             f"val AUC, linear - gates: mean {summary['val_auc_linear_minus_gates_mean']:+.4f}, "
             f"min {summary['val_auc_linear_minus_gates_min']:+.4f}, "
             f"max {summary['val_auc_linear_minus_gates_max']:+.4f} "
             f"over {len(cells)} cells."]
    write_markdown_table(args.markdown, "Router: the searched gates vs a linear router on the first min_dim columns",
                         ["data", "backbone", "seed", "K (distinct dims)", "gates params", "linear params",
                          "linear FLOPs",
                          "largest group", "gates agree", "linear agree start", "linear agree end", "val AUC gates",
                          "val AUC linear", "diff"], _summary_rows(cells), notes)
    with Path(args.markdown).open("a") as out:
        out.write("\n## Candidates (agreement with the searched routing on validation rows, searched tables)\n\n"
                  "| candidate | mean agreement | min agreement | params / iHAS tables |\n|---|---|---|---|\n")
        for name, mean, low, share in candidate_rows:
            out.write(f"| {name} | {mean:.3f} | {low:.3f} | {share:.1%} |\n")


if __name__ == "__main__":
    main()
