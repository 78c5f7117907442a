"""PIM co-design Pareto front on real data: supernet accuracy x analytic PIM cost, with Optuna.

For each data set: train a DeepFM supernet (dim 16, DNN 400-400 so that DNN widths matter for cost; dims
(2, 4, 8, 16) and width shares (0.25 .. 1) sampled per step) with ``ihas supernet``; run the multi-objective
study of :mod:`ihas_lightning.pim.study` (TPE, N trials, validation AUC with inherited weights); then
re-score every point of the front on the *test* split (the study never saw it) and compare with the baseline
scored the same way: the full supernet (every field at 16, full widths), host-only, fp32.

The question asked of it: is there a front point within 0.001 test AUC of the baseline with
flops_ratio <= 0.5, energy_ratio <= 0.56 and latency_ratio <= 0.67 under our cost model?

Usage:
    python benchmarks/pim_pareto.py                        # MovieLens-100K and Criteo 10k, 200 trials each
    python benchmarks/pim_pareto.py --trials 50 --datasets criteo --json /tmp/pim.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, write_json  # noqa: E402

from ihas_lightning import SupernetConfig  # noqa: E402
from ihas_lightning.cli import parse_run_config  # noqa: E402
from ihas_lightning.paths import shared_data_dir  # noqa: E402
from ihas_lightning.pim.pareto import pareto_points, write_outputs  # noqa: E402
from ihas_lightning.pipeline.supernet import train_supernet  # noqa: E402
from ihas_lightning.pim.study import (StudySettings, build_objective, candidate_of, load_supernet,  # noqa: E402
                                      run_study)

TARGET = {"auc_tolerance": 0.001, "flops_ratio": 0.5, "energy_ratio": 0.56, "latency_ratio": 0.67}
DATASETS = {  # name: (path under the shared data folder, format, batch size, epochs)
    "movielens-100k": ("movielens/ml-100k", "movielens-100k", 1024, 3),
    "criteo-10k": ("criteo/train-10k.txt", "criteo", 256, 6),
}


def meets(point: dict, base_auc: float) -> bool:
    return (point["test_auc"] >= base_auc - TARGET["auc_tolerance"] and point["flops_ratio"] <= TARGET["flops_ratio"]
            and point["energy_ratio"] <= TARGET["energy_ratio"] and point["latency_ratio"] <= TARGET["latency_ratio"])


def run_dataset(name: str, args: argparse.Namespace, root: Path) -> dict:
    rel, fmt, batch, epochs = DATASETS[name]
    run = root / name
    start = time.perf_counter()
    config = parse_run_config([
        "supernet", "--data", str(shared_data_dir() / rel), "--format", fmt, "--dim", "16", "--dnn", args.dnn,
        "--epochs", str(args.epochs or epochs), "--batch-size", str(batch), "--out", str(run), "--quiet",
        "--seed", str(args.seed)])
    metrics = train_supernet(run, config, SupernetConfig(dim_choices=(2, 4, 8, 16)))
    train_s = time.perf_counter() - start
    settings = StudySettings(run_dir=str(run), trials=args.trials, sampler=args.sampler, seed=args.seed)
    objective = build_objective(settings)
    start = time.perf_counter()
    study = run_study(settings, objective)
    study_s = time.perf_counter() - start
    write_outputs(study, run / "pim", objective.space, settings.storage_url, tensorboard=False)
    _, dm = load_supernet(str(run))
    test = [dict(b) for b in dm.stream("test")]
    base_test = objective.accuracy(objective.space.full, "fp32", test)
    points = []
    for p in pareto_points(study, objective.space):
        scored = objective.evaluate(candidate_of(objective.space, p["params"]), batches=test)
        points.append({"number": p["number"], "val_auc": p["auc"], "test_auc": scored["auc"],
                       "test_auc_delta": scored["auc"] - base_test, "latency_ratio": p["latency_ratio"],
                       "energy_ratio": p["energy_ratio"], "flops_ratio": p["flops_ratio"],
                       "dims": list(p["dims"].values()), "widths": p["widths"], "pim": p["pim"]})
    hits = [p for p in points if meets(p, base_test)]
    best = max(hits, key=lambda p: p["test_auc"]) if hits else None
    return {"dataset": name, "rows_train": metrics["rows_train"], "dnn": metrics["dnn"], "epochs": metrics["epochs"],
            "supernet_val_auc": metrics["val_auc"], "baseline_val_auc": objective.baseline_auc,
            "baseline_test_auc": base_test, "trials": args.trials, "sampler": args.sampler,
            "trial_states": {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "FAIL")},
            "front_size": len(points), "meets_target": bool(hits), "best_meeting_target": best,
            "seconds_supernet": train_s, "seconds_study": study_s, "seconds_per_trial": study_s / max(args.trials, 1),
            "front": sorted(points, key=lambda p: -p["test_auc"])}


def write_markdown(path: Path, payload: dict) -> None:
    lines = ["# PIM co-design Pareto front (supernet x analytic PIM cost model)", "",
             f"Target: a front point within {TARGET['auc_tolerance']} test AUC of the baseline with flops_ratio <= "
             f"{TARGET['flops_ratio']}, energy_ratio <= {TARGET['energy_ratio']}, latency_ratio <= "
             f"{TARGET['latency_ratio']}. Baseline = full supernet (all dims 16, full DNN widths), host-only fp32, "
             "scored the same way (inherited weights, test split).", "",
             "| data | trials | front | baseline test AUC | target met | best point: test AUC (delta) | latency | "
             "energy | FLOPs | dims | widths | PIM |", "|" + "---|" * 12]
    for r in payload["results"]:
        b = r["best_meeting_target"]
        if b:
            pim = b["pim"]
            lines.append(f"| {r['dataset']} | {r['trials']} | {r['front_size']} | {r['baseline_test_auc']:.4f} | yes | "
                         
                         f"{b['test_auc']:.4f} ({b['test_auc_delta']:+.4f}) | {b['latency_ratio']:.3f} | "
                         f"{b['energy_ratio']:.3f} | {b['flops_ratio']:.3f} | {','.join(map(str, b['dims']))} | "
                         f"{','.join(map(str, b['widths']))} | {pim['device']} x{pim['num_units']} "
                         f"{pim['table_placement']} {pim['precision']} {pim['partitioning']} B={pim['batch_size']} |")
        else:
            lines.append(f"| {r['dataset']} | {r['trials']} | {r['front_size']} | {r['baseline_test_auc']:.4f} | no | "
                         "- | - | - | - | - | - | - |")
    for r in payload["results"]:
        shown = min(15, r["front_size"])
        lines += ["", f"## {r['dataset']}: front points by test AUC ({shown} of {r['front_size']})", "",
                  "| trial | val AUC | test AUC | delta vs baseline | latency | energy | FLOPs | dims | widths |",
                  "|" + "---|" * 9]
        for p in r["front"][:15]:
            lines.append(f"| {p['number']} | {p['val_auc']:.4f} | {p['test_auc']:.4f} | {p['test_auc_delta']:+.4f} | "
                         f"{p['latency_ratio']:.3f} | {p['energy_ratio']:.3f} | {p['flops_ratio']:.3f} | "
                         f"{','.join(map(str, p['dims']))} | {','.join(map(str, p['widths']))} |")
        lines += ["", f"- supernet: DeepFM dim 16, DNN {r['dnn']}, {r['epochs']} epochs, {r['rows_train']} train rows; "
                  f"{r['seconds_supernet']:.0f} s; study {r['seconds_study']:.0f} s "
                  f"({r['seconds_per_trial']:.2f} s/trial, {r['sampler']}); trial states {r['trial_states']}"]
    lines += ["", "- costs are ratios under the analytic model of `ihas_lightning/pim/cost_model.py` "
              "(not a simulator);",
              "  latency is compared at the candidate's own batch size.",
              f"- machine: {payload['machine']['cpu']}, {payload['machine']['torch_threads']} torch thread(s); "
              f"command: {payload['command']}"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--sampler", default="tpe", choices=("tpe", "nsga2", "gp"))
    parser.add_argument("--dnn", default="400,400")
    parser.add_argument("--epochs", type=int, default=None, help="supernet epochs (default per data set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS_DIR / "pim_pareto.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    root = Path(args.out or tempfile.mkdtemp(prefix="ihas_pim_"))
    results = [run_dataset(name.strip(), args, root) for name in args.datasets.split(",") if name.strip()]
    payload = {"benchmark": "pim_pareto", "date": now_iso(), "machine": machine_info(), "target": TARGET,
               "command": "python benchmarks/pim_pareto.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "results": results}
    path = write_json(args.json, payload)
    write_markdown(Path(path).with_suffix(".md"), payload)
    for r in results:
        print(f"{r['dataset']}: baseline test AUC {r['baseline_test_auc']:.4f}, front {r['front_size']}, "
              f"target met: {r['meets_target']}" + (f" (test AUC {r['best_meeting_target']['test_auc']:.4f}, latency "
              f"{r['best_meeting_target']['latency_ratio']:.3f}, energy {r['best_meeting_target']['energy_ratio']:.3f},"
              f" FLOPs {r['best_meeting_target']['flops_ratio']:.3f})" if r["meets_target"] else ""))
    print(f"wrote {path} and {Path(path).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
