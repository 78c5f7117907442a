"""Quality of row-wise embedding updates: test AUC with ``--embedding-updates rowwise`` vs ``dense``.

For each data set x backbone x seed, ``ihas train`` (the CLI's ``main``) trains the plain backbone once with
each update kind on the same data, split and initialization (the seed draws both); the test AUC is read from
its ``metrics.json``. Reported per data set and backbone: the mean test AUC of each kind over the seeds and
their difference; the requirement is ``|rowwise - dense| <= 0.002``. One torch thread per run, runs in
sequence.

Usage:
    python benchmarks/sparse_quality.py                                   # both data sets, 3 seeds
    python benchmarks/sparse_quality.py --datasets criteo10k --seeds 1 --json /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, provenance, write_json, write_markdown_table  # noqa: E402

from ihas_lightning.paths import shared_data_dir  # noqa: E402

TOLERANCE = 0.002
KINDS = ("rowwise", "dense")
# Data set -> ``ihas train`` options (batch 4096 for ML-1M: ~120 steps an epoch).
DATASETS = {
    "criteo10k": ["--data", "{data}/criteo/train-10k.txt", "--format", "criteo", "--batch-size", "256",
                  "--epochs", "3"],
    "ml1m-first3k": ["--data", "{data}/movielens/ml-1m-first3k", "--format", "movielens-1m", "--batch-size",
                     "4096", "--epochs", "2"],
}


def train(options: list[str], out: Path) -> dict:
    """``ihas train`` with ``options``, through the library (``train_backbone``)."""
    from ihas_lightning.cli import parse_run_config
    from ihas_lightning.training import train_backbone

    config = parse_run_config(["train", *options, "--out", str(out), "--quiet", "--threads", "1"])
    return train_backbone(config.data, config.model, config.trainer, out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--backbones", nargs="+", default=["DeepFM", "DCN"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dnn", default="256,128")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "sparse_quality.json")
    args = parser.parse_args(argv)
    data_dir = shared_data_dir()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for dataset in args.datasets:
            options = [o.format(data=data_dir) for o in DATASETS[dataset]] + ["--cache-dir", str(cache),
                                                                               "--dnn", args.dnn]
            for backbone in args.backbones:
                runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
                for seed in range(args.seeds):
                    for kind in KINDS:
                        start = time.perf_counter()
                        out = Path(tmp) / f"{dataset}-{backbone}-{seed}-{kind}"
                        metrics = train([*options, "--backbone", backbone, "--seed", str(seed),
                                         "--embedding-updates", kind], out)
                        runs[kind].append({"seed": seed, "test_auc": metrics["test_auc"],
                                           "test_logloss": metrics["test_logloss"],
                                           "train_samples_per_s": metrics["train_samples_per_s"],
                                           "rows_train": metrics["rows_train"],
                                           "seconds": round(time.perf_counter() - start, 1)})
                        print(f"{dataset} {backbone} seed {seed} {kind:7s}: test AUC {metrics['test_auc']:.4f}",
                              flush=True)
                mean = {kind: statistics.fmean(r["test_auc"] for r in runs[kind]) for kind in KINDS}
                results.setdefault(dataset, {})[backbone] = {
                    "mean_test_auc": mean, "difference": mean["rowwise"] - mean["dense"],
                    "within_tolerance": abs(mean["rowwise"] - mean["dense"]) <= TOLERANCE, "runs": runs}
    command = "python benchmarks/sparse_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"results": results, "tolerance": TOLERANCE, "seeds": args.seeds, "dnn": args.dnn,
               "settings": DATASETS, "machine": machine_info(), "date": now_iso(),
               "provenance": {**provenance(), "command": command}}
    path = write_json(args.json, payload)
    rows = [[dataset, backbone, f"{r['mean_test_auc']['rowwise']:.4f}", f"{r['mean_test_auc']['dense']:.4f}",
             f"{r['difference']:+.4f}", "yes" if r["within_tolerance"] else "NO"]
            for dataset, by_backbone in results.items() for backbone, r in by_backbone.items()]
    write_markdown_table(path.with_suffix(".md"), "Row-wise vs dense embedding updates: test AUC",
                         ["data", "backbone", "rowwise", "dense", "difference", f"within {TOLERANCE}"], rows, notes=[
        f"mean test AUC over {args.seeds} seeds (each seed: split and initialization), `ihas train` with DNN "
        f"{args.dnn}, 1 torch thread; options per data set: {json.dumps(DATASETS)}",
        f"command: `{payload['provenance']['command']}`; commit {payload['provenance']['commit']}; "
        f"{payload['date']}"])
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return payload


if __name__ == "__main__":
    main()
