"""Quality of iHAS at equal footprint, with `ihas run`'s defaults on every data set (issue 16).

Per data set one fixed split (``--split-seed 0``: 8/1/1) and several initialization seeds (``--seed``); every
run is plain ``ihas run`` with its defaults, plus ``--fieldwise --mde-baseline`` so that the run trains every
model compared here. Nothing is set per data set but where the data is (and the synthetic generator's rows).

Models (keys of the run's ``metrics.json``):
(a) ``baseline``: uniform dimension 16; (b) ``baseline_matched``: uniform, d or d+1 per field, at iHAS's
footprint (tables + router) within 1%; (c) ``ihas``; (f) ``fieldwise``: the same search with one group;
(g) ``baseline_mde``: mixed dimensions by frequency (Ginart et al. 2019, arXiv 1909.11810), its alpha chosen
on validation, at iHAS's footprint; and what the run keeps (``selection``, chosen on validation).

Reported per data set and backbone: per-seed paired test-AUC differences (c)-(b), (c)-(f), (c)-(g), (c)-(a)
on the same split, their mean and 95% t-interval; footprints; the requirement of issue 16: footprint of (c)
<= 60% of (a)'s tables; (c)-(b), (c)-(f), (c)-(g) >= 0 in mean with the interval's lower end >= -0.001;
(c) >= (a) - 0.002.

MovieLens-1M-first3k is the held-out set: it runs only when named (``--datasets movielens-1m``), once the
defaults are frozen.

Usage:
    python benchmarks/quality.py --seeds 5                               # the development data sets
    python benchmarks/quality.py --datasets movielens-1m --seeds 5 --json benchmarks/results/quality_ml1m.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, write_json  # noqa: E402

from ihas_lightning.paths import shared_data_dir  # noqa: E402

DATASETS = {"criteo": ("criteo/train-10k.txt", "criteo", []), "avazu": ("avazu/train-9k.csv", "avazu", []),
            "movielens-100k": ("movielens/ml-100k", "movielens-100k", []),
            "synthetic": ("synthetic", "synthetic", ["--rows", "100000"]),
            "movielens-1m": ("movielens/ml-1m-first3k", "movielens-1m", [])}
DEVELOPMENT = ("criteo", "avazu", "movielens-100k", "synthetic")
MODELS = (("a", "baseline", "uniform 16"), ("b", "baseline_matched", "uniform, same footprint"),
          ("c", "ihas", "iHAS"), ("f", "fieldwise", "field-wise (one group)"),
          ("g", "baseline_mde", "mixed dims by frequency"))
FOOTPRINT_LIMIT, FLOOR, UNIFORM_SLACK = 0.6, -0.001, 0.002
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 29: 2.045}
"""Student's t 0.975 quantiles by degrees of freedom (a missing one takes the next smaller listed)."""


def run_args(dataset: str, backbone: str, seed: int, out: str) -> list[str]:
    path, fmt, extra = DATASETS[dataset]
    data = path if fmt == "synthetic" else str(shared_data_dir() / path)
    return ["run", "--data", data, "--format", fmt, "--backbone", backbone, "--split-seed", "0",
            "--seed", str(seed), "--out", out, "--fieldwise", "--mde-baseline", "--quiet", "--threads", "1", *extra]


def run_one(dataset: str, backbone: str, seed: int, root: str) -> dict:
    """One ``ihas run`` in a fresh process; returns its ``metrics.json``."""
    import contextlib
    import io
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from ihas_lightning import run_pipeline
    from ihas_lightning.cli import parse_run_config
    from ihas_lightning.cli.quiet import quiet_output

    out = Path(root) / f"{dataset}-{backbone}-{seed}"
    start = time.perf_counter()
    with quiet_output(True), contextlib.redirect_stdout(io.StringIO()):
        metrics = run_pipeline(parse_run_config(run_args(dataset, backbone, seed, str(out))))
    return {**metrics, "seed": seed, "wall_seconds": time.perf_counter() - start}


def interval(values: list[float]) -> dict:
    """Mean and 95% t-interval of per-seed values (no interval from one value)."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "values": values}
    t = T975[max(k for k in T975 if k <= n - 1)]
    half = t * statistics.stdev(values) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "values": values}


def summarize(runs: list[dict]) -> dict:
    present = [(letter, key) for letter, key, _ in MODELS if all(key in r for r in runs)]
    auc = {letter: [r[key]["test_auc"] for r in runs] for letter, key in present}
    val = {letter: [r[key]["val_auc"] for r in runs] for letter, key in present}
    footprint = {letter: statistics.fmean(r[key]["footprint_params"] for r in runs) for letter, key in present}
    diffs = {f"c-{x}": interval([c - o for c, o in zip(auc["c"], auc[x])]) for x in ("b", "f", "g", "a") if x in auc}
    share = footprint["c"] / statistics.fmean(r["baseline"]["embedding_params"] for r in runs)
    checks = {"footprint_le_60pct": share <= FOOTPRINT_LIMIT,
              "ge_uniform16_minus_0.002": diffs["c-a"]["mean"] >= -UNIFORM_SLACK}
    for x in ("b", "f", "g"):
        if f"c-{x}" in diffs:
            d = diffs[f"c-{x}"]
            checks[f"c-{x}"] = d["mean"] >= 0 and (d["low"] is None or d["low"] >= FLOOR)
    kept = [r.get("selection", {}).get("kept") for r in runs]
    steps = [step["step"] for step in runs[0].get("losses", [])]
    losses = {name: statistics.fmean(next(x["val_auc"] for x in r["losses"] if x["step"] == name) for r in runs)
              for name in steps if all(r.get("losses") for r in runs)}
    return {"losses": losses, "test_auc": {x: interval(v) for x, v in auc.items()},
            "val_auc": {x: interval(v) for x, v in val.items()},
            "footprint": footprint, "footprint_share": share, "diffs": diffs, "kept": kept, "checks": checks,
            "requirement": "PASS" if all(checks.values()) else "MISS"}


def _ci(d: dict) -> str:
    if d["low"] is None:
        return f"{d['mean']:+.4f}"
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def markdown(results: dict) -> str:
    lines = ["# Quality at equal footprint, one set of defaults", "",
             f"{results['created']}; commit {results['provenance']['commit']}; `{results['provenance']['command']}`. "
             f"Per data set one split (--split-seed 0), up to {results['seeds']} initialization seeds (the column "
             f"says how many finished{'' if results.get('complete', True) else '; the run was stopped before the rest'}"
             "); every run is `ihas run` with its defaults plus `--fieldwise --mde-baseline`. Test AUC differences "
             "are per seed (same split), mean and 95% t-interval.", "",
             "| data / backbone | seeds | (c) iHAS | (c)-(b) uniform same footprint | (c)-(f) field-wise "
             "| (c)-(g) freq. MDE | (c)-(a) uniform 16 | footprint (c)/(a) | kept (validation) | req. |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in results["cells"]:
        s = cell["summary"]
        d = s["diffs"]
        kept = ", ".join(f"{k}: {s['kept'].count(k)}" for k in sorted({k for k in s["kept"] if k}))
        lines.append(f"| {cell['dataset']} / {cell['backbone']} | {len(cell['runs'])} "
                     f"| {s['test_auc']['c']['mean']:.4f} | "
                     + " | ".join(_ci(d[k]) if k in d else "-" for k in ("c-b", "c-f", "c-g", "c-a"))
                     + f" | {s['footprint_share']:.0%} | {kept} | {s['requirement']} |")
    lines += ["", "Requirement: footprint of (c) <= 60% of (a)'s tables; (c)-(b), (c)-(f), (c)-(g) >= 0 in mean "
              "with the interval's lower end >= -0.001; (c) >= (a) - 0.002 in mean.", ""]
    steps = next((list(c["summary"].get("losses", {})) for c in results["cells"] if c["summary"].get("losses")), [])
    if steps:
        lines += ["## Where validation AUC goes (mean over seeds, `DIR/losses/metrics.json`)", "",
                  "| data / backbone | " + " | ".join(steps) + " |", "|---|" + "---|" * len(steps)]
        for cell in results["cells"]:
            losses = cell["summary"].get("losses", {})
            lines.append(f"| {cell['dataset']} / {cell['backbone']} | "
                         + " | ".join(f"{losses[k]:.4f}" if k in losses else "-" for k in steps) + " |")
        lines.append("")
    for cell in results["cells"]:
        s = cell["summary"]
        lines += [f"## {cell['dataset']} / {cell['backbone']}", "", "| model | test AUC | val AUC | footprint |",
                  "|---|---|---|---|"]
        for letter, _, label in MODELS:
            if letter in s["test_auc"]:
                lines.append(f"| ({letter}) {label} | {_ci(s['test_auc'][letter])} | {_ci(s['val_auc'][letter])} "
                             f"| {s['footprint'][letter]:,.0f} |")
        failed = [k for k, ok in s["checks"].items() if not ok]
        lines += ["", f"{s['requirement']}" + (f": {', '.join(failed)}" if failed else ""), ""]
    return "\n".join(lines)


def render(source: Path, path: Path) -> dict:
    """The summaries and Markdown of an earlier result recomputed from its runs (no training)."""
    results = json.loads(source.read_text())
    results["cells"] = [{**c, "summary": summarize(c["runs"])} for c in results["cells"]]
    write_json(path, results)
    path.with_suffix(".md").write_text(markdown(results))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DEVELOPMENT),
                        help=f"of {', '.join(DATASETS)}; movielens-1m (held out) only when named")
    parser.add_argument("--backbones", default="DeepFM,DCN")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (each uses one thread)")
    parser.add_argument("--json", default=str(RESULTS_DIR / "quality.json"))
    parser.add_argument("--keep-runs", default=None, help="keep the run folders here (reruns reuse done stages)")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="only re-summarize the runs of an earlier result (its provenance kept) into --json")
    args = parser.parse_args(argv)
    if args.render:
        return render(Path(args.render), Path(args.json))
    datasets, backbones = args.datasets.split(","), args.backbones.split(",")
    if unknown := [d for d in datasets if d not in DATASETS]:
        parser.error(f"unknown data sets {unknown}; known: {', '.join(DATASETS)}")
    root = args.keep_runs or tempfile.mkdtemp(prefix="ihas-quality-")
    jobs = [(d, b, s) for s in range(args.seeds) for d in datasets for b in backbones]   # seed-major
    path, start, done = Path(args.json), time.perf_counter(), {}

    def write() -> dict:
        cells = [{"dataset": d, "backbone": b, "command": run_args(d, b, 0, "DIR"),
                  "runs": [done[(d, b, s)] for s in range(args.seeds) if (d, b, s) in done]}
                 for d in datasets for b in backbones]
        cells = [{**c, "summary": summarize(c["runs"])} for c in cells if c["runs"]]
        results = {"benchmark": "quality", "created": now_iso(), "seeds": args.seeds, "jobs": args.jobs,
                   "seconds": time.perf_counter() - start, "machine": machine_info(), "cells": cells,
                   "complete": len(done) == len(jobs)}
        results = json.loads(json.dumps(results, default=str))
        write_json(path, results)
        results = json.loads(path.read_text())
        path.with_suffix(".md").write_text(markdown(results))
        return results

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {job: pool.submit(run_one, *job, root) for job in jobs}
        for job, future in futures.items():
            try:
                done[job] = future.result()
            except Exception as error:  # noqa: BLE001 - one failed run must not lose the others
                print(f"{job}: FAILED: {error}", flush=True)
                continue
            print(f"{job}: iHAS {done[job]['ihas']['test_auc']:.4f} ({done[job]['wall_seconds']:.0f} s)", flush=True)
            results = write()
    results = write()
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
