"""When does starting from a trained supernet help the iHAS pipeline? (issue 5, item 4)

Per data set and seed, one supernet (``ihas supernet``) and four pipelines on the same split, each reading
the stages of the one before it where they are the same (baseline, search, clustering are copied, not rerun):

* ``scratch``: the default ``ihas run`` (one warm-up epoch of the plain backbone, then the gates);
* ``search<-supernet``: the search starts from the supernet (``--init-from``, no warm-up epoch);
* ``retrain<-supernet``: the default search, the retraining starts from the supernet (``--retrain-init-from``);
* ``both<-supernet``: the search and the retraining start from the supernet.

Reported per variant: validation AUC after the search and after the retraining (what a user may choose on),
test AUC, the share of test samples routed to the most used group, and the training seconds of each stage;
the supernet's own seconds separately (it is free only when it exists anyway, e.g. for ``ihas pim``).

Usage:
    python benchmarks/supernet_warm_start.py                       # ~20 min on 2 busy CPU cores
    python benchmarks/supernet_warm_start.py --datasets synthetic --seeds 1 --json /tmp/w.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, write_json, write_markdown_table  # noqa: E402

from ihas_lightning import run_pipeline  # noqa: E402
from ihas_lightning import SupernetConfig  # noqa: E402
from ihas_lightning.cli import parse_run_config  # noqa: E402
from ihas_lightning.pipeline.supernet import train_supernet  # noqa: E402
from ihas_lightning.paths import shared_data_dir  # noqa: E402

DATASETS = {
    "synthetic": ("synthetic", ["--format", "synthetic", "--rows", "150000", "--batch-size", "2048", "--lr", "3e-3"]),
    "movielens-100k": ("movielens/ml-100k", ["--format", "movielens-100k", "--batch-size", "1024", "--lr", "2e-3"]),
}
COMMON = ["--backbone", "DeepFM", "--dim", "16", "--dnn", "128,64", "--quiet", "--threads", "1"]
PIPELINE = ["--epochs", "3", "--retrain-epochs", "2", "--baseline-epochs", "5", "--budget", "0.6", "--k", "4",
            "--prefix", "--no-matched-baseline", "--gate-lr", "3e-3"]
SUPERNET_EPOCHS = "3"
# variant: (stages copied from, search from the supernet, retraining from the supernet)
VARIANTS = {"scratch": (None, False, False), "search<-supernet": ("scratch", True, False),
            "retrain<-supernet": ("scratch", False, True), "both<-supernet": ("search<-supernet", True, True)}


def _quietly(argv: list[str]) -> None:
    """``ihas run`` (``run_pipeline``) or ``ihas supernet`` (``train_supernet``, its default search space)
    through the library, with the options of that command line."""
    config = parse_run_config(argv)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if argv[0] == "run":
            run_pipeline(config)
        else:
            train_supernet(config.out, config, SupernetConfig())


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())


def run_seed(dataset: str, seed: int, root: Path) -> dict:
    data, options = DATASETS[dataset]
    data = data if data == "synthetic" else str(shared_data_dir() / data)
    base = ["--data", data, *options, *COMMON, "--seed", str(seed)]
    supernet_dir = root / "supernet"
    if not (supernet_dir / "supernet" / "metrics.json").exists():
        _quietly(["supernet", *base, "--epochs", SUPERNET_EPOCHS, "--out", str(supernet_dir)])
    supernet = supernet_dir / "supernet" / "checkpoints" / "last.ckpt"
    rows = {"supernet_seconds": _metrics(supernet_dir / "supernet" / "metrics.json").get("seconds")}
    for name, (copy_from, search_from, retrain_from) in VARIANTS.items():
        out = root / name.replace("<-", "_from_")
        if copy_from is not None and not out.exists():
            source = root / copy_from.replace("<-", "_from_")
            keep = ("baseline", "search", "cluster") if search_from == VARIANTS[copy_from][1] else ("baseline",)
            for stage in keep:
                shutil.copytree(source / stage, out / stage)
        extra = (["--init-from", str(supernet), "--warmup-epochs", "0"] if search_from else ["--warmup-epochs", "1"])
        extra += ["--retrain-init-from", str(supernet)] if retrain_from else []
        _quietly(["run", *base, *PIPELINE, *extra, "--out", str(out)])
        search, retrain = _metrics(out / "search" / "metrics.json"), _metrics(out / "retrain" / "metrics.json")
        rows[name] = {"search_val_auc": search["val_auc"], "retrain_val_auc": retrain["val_auc"],
                      "test_auc": retrain["test_auc"], "test_logloss": retrain["test_logloss"],
                      "top_group_share": max(retrain["group_share_test"]),
                      "search_seconds": search["seconds"], "retrain_seconds": retrain["seconds"]}
    rows["uniform16_test_auc"] = _metrics(root / "scratch" / "baseline" / "metrics.json")["test_auc"]
    return rows


def _mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def summarize(dataset: str, seeds: list[dict]) -> tuple[list[list], str]:
    table = []
    for name in VARIANTS:
        runs = [s[name] for s in seeds]
        table.append([dataset, name, _mean_std([r["search_val_auc"] for r in runs]),
                      _mean_std([r["retrain_val_auc"] for r in runs]), _mean_std([r["test_auc"] for r in runs]),
                      f"{statistics.fmean(r['top_group_share'] for r in runs):.2f}",
                      f"{statistics.fmean(r['search_seconds'] + r['retrain_seconds'] for r in runs):.0f}"])
    val = {name: statistics.fmean(s[name]["retrain_val_auc"] for s in seeds) for name in VARIANTS}
    best = max(val, key=val.get)
    verdict = (f"{dataset}: best validation AUC after retraining: {best} ({val[best]:.4f}; scratch "
               f"{val['scratch']:.4f}); supernet {statistics.fmean(s['supernet_seconds'] for s in seeds):.0f} s "
               f"per seed; uniform-16 test AUC {_mean_std([s['uniform16_test_auc'] for s in seeds])}")
    return table, verdict


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, of " + ", ".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "supernet_warm_start.json")
    parser.add_argument("--keep-runs", type=Path, default=None, help="run directories (reused when rerun)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import tempfile

    root = args.keep_runs or Path(tempfile.mkdtemp(prefix="ihas-warm-start-"))
    results: dict = {"created": now_iso(), "machine": machine_info(), "seeds": args.seeds,
                     "settings": {"common": COMMON, "pipeline": PIPELINE, "supernet_epochs": SUPERNET_EPOCHS,
                                  "datasets": {k: v[1] for k, v in DATASETS.items()}}, "datasets": {}}
    table, verdicts = [], []
    for dataset in args.datasets.split(","):
        if dataset not in DATASETS:
            parser.error(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")
        seeds = []
        for seed in range(args.seeds):
            seeds.append(run_seed(dataset, seed, root / dataset / str(seed)))
            print(f"{dataset} seed {seed}: " + ", ".join(f"{n} {seeds[-1][n]['retrain_val_auc']:.4f}"
                                                          for n in VARIANTS), flush=True)
        rows, verdict = summarize(dataset, seeds)
        results["datasets"][dataset] = {"runs": seeds, "verdict": verdict}
        table += rows
        verdicts.append(verdict)
    write_json(args.json, results)
    write_markdown_table(
        args.json.with_suffix(".md"), "Starting the iHAS pipeline from a trained supernet",
        ["data", "variant", "search val AUC", "retrain val AUC", "test AUC", "top group share", "seconds"], table,
        notes=[*verdicts, f"{args.seeds} seeds (each draws the split); DeepFM dim 16, DNN 128-64, search 3 epochs "
               f"(1 warm-up epoch when not from the supernet), retraining 2 epochs, budget 0.6, K = 4, nested gates; "
               f"supernet {SUPERNET_EPOCHS} epochs (`ihas supernet` defaults); seconds: search + retraining",
               "the router is always the search's gate network; it reads the retrained model's own tables, so a "
               "retraining from the supernet's tables can route differently from the searched groups "
               "(top group share)",
               f"created {results['created']} by `python benchmarks/supernet_warm_start.py`"])
    return results


if __name__ == "__main__":
    main()
