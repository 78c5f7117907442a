"""Transferability benchmark (issue 7): dimensions searched on DeepFM and on DCN, retrained on six backbones.

For each data set (MovieLens-100K, Criteo 10k) and each source backbone (DeepFM, DCN): ``ihas run`` on the
source (split seed 0), then ``ihas transfer`` to every target over ``--seeds`` model seeds, against the target
at uniform dimension 16 and at iHAS's whole footprint (tables + router; every field d or d+1 columns).

A fair fight: the three variants of a target differ only in their dimensions. Each starts its tables from the
search's trained tables cut to its own widths, with fresh dense layers (the searched backbone included), and
trains for the same 3 epochs (``--baseline-epochs``) at the same learning rate (see
``ihas_lightning/experiments/transfer.py``). Sizes are footprints (``footprint_params``).

Checked per (data set, source, target), on the mean over seeds:

* reach: iHAS test AUC >= uniform-16 AUC - one (sample) std of uniform-16, at <= 60% of its footprint;
* beat: iHAS test AUC > the matched model's AUC; required on at least 2/3 of the targets.

Settings were fixed before looking at test numbers (small, CPU-friendly: DNN 64,32, 3 epochs); nothing here
is tuned on the test split.

Usage:
    python benchmarks/transfer.py                                  # ~30-40 min on 2 busy CPU cores
    python benchmarks/transfer.py --datasets criteo --seeds 2 --json /tmp/t.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, write_json, write_markdown_table  # noqa: E402

from ihas_lightning import run_pipeline  # noqa: E402
from ihas_lightning.cli import parse_run_config  # noqa: E402
from ihas_lightning.experiments.transfer import TransferConfig, run_transfer  # noqa: E402
from ihas_lightning.footprint_dims import width_label  # noqa: E402
from ihas_lightning.paths import shared_data_dir  # noqa: E402

SOURCES = ("DeepFM", "DCN")
TARGETS = ("DeepFM", "DCN", "WDL", "NFM", "PNN", "AutoInt")
# Per data set: where it is, and the `ihas run` options (fixed up front, not tuned on test data).
DATASETS = {
    "movielens-100k": ("movielens/ml-100k", ["--format", "movielens-100k", "--batch-size", "2048", "--lr", "2e-3"]),
    "criteo-10k": ("criteo/train-10k.txt", ["--format", "criteo", "--batch-size", "512", "--lr", "1e-3"]),
}
# --retrain-epochs 3 (2 until 2026-11-25): the source's own fine-tuning was still rising on validation at its 2nd
# epoch (MovieLens DCN, model seeds 1 and 2: 0.7821 -> 0.7828, 0.7821 -> 0.7834); 3 is every other target's count.
# --budget-fit gates: the fit these results were made with, and the one the quality benchmark chose on validation
# for MovieLens and Criteo (`--budget-fit loss`, the default since, lowered their retrained validation AUC).
COMMON = ["--dim", "16", "--dnn", "64,32", "--epochs", "3", "--warmup-epochs", "1", "--retrain-epochs", "3",
          "--baseline-epochs", "3", "--budget", "0.5", "--budget-fit", "gates", "--seed", "0", "--quiet",
          "--threads", "1"]
REACH_SHARE = 0.6
BEAT_SHARE = 2 / 3


def _quietly(fn, *args, **kwargs):
    """Lightning's per-stage banners would drown the progress lines."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def compute_seconds(out: Path) -> float:
    """Seconds of every stage trained for this run (search .. transfer), read from the stages' metrics files, so
    a resumed benchmark still reports the whole cost."""
    total = 0.0
    for path in out.rglob("metrics.json"):
        metrics = json.loads(path.read_text())
        if isinstance(metrics.get("seconds"), (int, float)):
            total += float(metrics["seconds"])
    return total


def _pm(stats: dict) -> str:
    return f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}" if stats["std"] is not None else "")


def verdicts(row: dict) -> dict:
    ihas, uniform, matched = row["ihas"], row["uniform"], row["matched"]
    share = ihas["footprint_params"] / uniform["footprint_params"]
    floor = uniform["test_auc"]["mean"] - (uniform["test_auc"]["std"] or 0.0)
    return {"param_share_vs_uniform16": share, "auc_floor": floor,
            "reach": bool(ihas["test_auc"]["mean"] >= floor and share <= REACH_SHARE),
            "beats_matched": bool(ihas["test_auc"]["mean"] > matched["test_auc"]["mean"]),
            "delta_vs_uniform16": ihas["test_auc"]["mean"] - uniform["test_auc"]["mean"],
            "delta_vs_matched": ihas["test_auc"]["mean"] - matched["test_auc"]["mean"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(RESULTS_DIR / "transfer.json"))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work-dir", default="runs/benchmarks/transfer", help="run directories (kept; resumable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    config = TransferConfig(backbones=tuple(args.targets.split(",")), seeds=args.seeds, uniform_dim=16)
    results, rows, started = [], [], time.perf_counter()
    for name in args.datasets.split(","):
        relative, options = DATASETS[name]
        data = shared_data_dir() / relative
        for source in args.sources.split(","):
            out = Path(args.work_dir) / f"{name}_{source}"
            clock = time.perf_counter()
            _quietly(run_pipeline, parse_run_config(["run", "--data", str(data), *options, *COMMON, "--backbone",
                                                     source, "--out", str(out)]))
            result = _quietly(run_transfer, out, config)
            for row in result["rows"]:
                row["verdict"] = verdicts(row)
                # Diagnostic: share of test samples the router sends to its most used group (model seed 0);
                # the search's own clustering is the reference (a share near 1 = routing collapsed).
                stage = out / config.stage(row["backbone"], 0, "ihas", result["uniform_dim"])
                share = json.loads((stage / "metrics.json").read_text())
                row["verdict"]["top_group_share_test"] = max(share["group_share_test"])
            result["seconds"] = {"this_invocation": time.perf_counter() - clock, "stages": compute_seconds(out)}
            results.append({**result, "dataset": name, "data": result["dataset"], "source": source})
            reached = sum(r["verdict"]["reach"] for r in result["rows"])
            beat = sum(r["verdict"]["beats_matched"] for r in result["rows"])
            print(f"{name} from {source}: reach {reached}/{len(result['rows'])}, beats matched {beat}/"
                  f"{len(result['rows'])} ({time.perf_counter() - clock:.0f} s)", flush=True)
            for row in result["rows"]:
                v, i, u, m = row["verdict"], row["ihas"], row["uniform"], row["matched"]
                rows.append([name, source, row["backbone"], _pm(i["test_auc"]), _pm(u["test_auc"]),
                             f"{_pm(m['test_auc'])} ({width_label(m)})", f"{v['top_group_share_test']:.2f}",
                             f"{v['param_share_vs_uniform16']:.2f}", "yes" if v["reach"] else "**no**",
                             "yes" if v["beats_matched"] else "**no**"])
    summary = []
    for entry in results:
        n = len(entry["rows"])
        reach = sum(r["verdict"]["reach"] for r in entry["rows"])
        beat = sum(r["verdict"]["beats_matched"] for r in entry["rows"])
        summary.append({"dataset": entry["dataset"], "source": entry["source"], "targets": n, "reach": reach,
                        "beats_matched": beat, "passed": reach == n and beat >= BEAT_SHARE * n})
    payload = {"benchmark": "transfer", "created": now_iso(), "machine": machine_info(),
               "command": "python " + " ".join(sys.argv), "seconds": time.perf_counter() - started,
               "stage_seconds": sum(r["seconds"]["stages"] for r in results),
               "settings": {"common": COMMON, "datasets": {k: v[1] for k, v in DATASETS.items()},
                            "targets": list(config.backbones), "seeds": config.seeds,
                            "reach_share": REACH_SHARE, "beat_share": BEAT_SHARE},
               "summary": summary, "results": results}
    path = write_json(args.json, payload)
    notes = [f"{s['dataset']} from {s['source']}: reach {s['reach']}/{s['targets']}, beats matched "
             f"{s['beats_matched']}/{s['targets']} -> {'PASS' if s['passed'] else 'MISS'}" for s in summary]
    notes += ["reach: mean iHAS test AUC >= mean uniform-16 AUC - its sample std over seeds, at <= 60% of its "
              "footprint (tables + router); beat: mean iHAS AUC > mean AUC of the model at iHAS's footprint (every "
              "field d or d+1 columns; needed on >= 2/3)",
              f"{config.seeds} model seeds (init + batch order), one split (seed 0); settings: {' '.join(COMMON)}",
              "every variant of every target (the searched backbone too) starts its tables from the search's trained "
              "tables cut to its widths, with fresh dense layers, and trains the same 3 epochs at the same lr; iHAS "
              "keeps the searched router and per-group dimensions",
              "top group share: share of test samples routed to the most used group (seed 0); the router reads the "
              "target's own tables",
              f"machine: {payload['machine']['cpu']}, 1 torch thread; {payload['stage_seconds'] / 60:.1f} min of stage "
              "training (sum of the stages' own seconds; the benchmark resumes finished stages); "
              f"command: {payload['command']}"]
    write_markdown_table(path.with_suffix(".md"), "Transferability of searched dimensions (test AUC, mean ± std)",
                         ["data", "searched on", "target", "iHAS", "uniform 16", "at iHAS footprint", "top group share",
                          "iHAS footprint / uniform-16", "reach", "beats matched"], rows, notes)
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
