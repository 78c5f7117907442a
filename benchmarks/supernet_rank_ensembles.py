"""Would averaging supernets' scores rank better? Computed from a supernet_rank result, no training.

Two ensembles of the fine-tuned candidate scores in ``benchmarks/results/supernet_rank.json``: the mean over the two
supernet seeds of one variant (if one supernet's errors were noise, two would halve it), and the mean of a
sandwich-rule supernet and a one-sub-architecture-a-step supernet of the same seed (the first ranks the development
sets best, the second MovieLens-1M-first3k). Either costs two supernets and two evaluations per candidate, half
the amortised speed-up. Reported: Kendall tau per share band and overall against the stand-alone mean, beside the
single supernets'.

Usage:
    python benchmarks/supernet_rank_ensembles.py            # reads results/supernet_rank.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, write_json, write_markdown_table  # noqa: E402
from _rank_parts import band_taus  # noqa: E402

ENSEMBLES: dict[str, tuple[str, ...]] = {
    "sandwich (seed 0)": ("sandwich",),
    "sandwich (seed 1)": ("sandwich@seed1",),
    "sandwich, seeds 0 + 1": ("sandwich", "sandwich@seed1"),
    "sandwich_kd, seeds 0 + 1": ("sandwich_kd", "sandwich_kd@seed1"),
    "sandwich + baseline (seed 0)": ("sandwich", "baseline"),
    "sandwich + baseline (seed 1)": ("sandwich@seed1", "baseline@seed1"),
    "sandwich + baseline_frozen (seed 0)": ("sandwich", "baseline_frozen"),
    "sandwich + baseline_frozen (seed 1)": ("sandwich@seed1", "baseline_frozen@seed1"),
}


def ensemble_taus(dataset: dict, members: tuple[str, ...]) -> dict:
    """Tau per band and overall of the members' mean fine-tuned AUC against the stand-alone mean AUC."""
    score = np.mean([[s["finetuned_auc"] for s in dataset["variants"][m]["scores"]] for m in members], axis=0)
    rows = [{**c, "ensemble_auc": float(x)} for c, x in zip(dataset["candidates"], score)]
    return band_taus(rows, dataset["bands"], "ensemble_auc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", default=str(RESULTS_DIR / "supernet_rank.json"))
    parser.add_argument("--json", default=str(RESULTS_DIR / "supernet_rank_ensembles.json"))
    args = parser.parse_args(argv)
    source = json.loads(Path(args.result).read_text())
    rows, records = [], []
    for dataset in source["datasets"]:
        for name, members in ENSEMBLES.items():
            if not all(m in dataset["variants"] for m in members):
                continue
            taus = ensemble_taus(dataset, members)
            records.append({"dataset": dataset["dataset"], "ensemble": name, "members": list(members), **taus})
            rows.append([dataset["dataset"], name, *taus["bands"].values(), taus["overall"]])
    bands = list(source["datasets"][0]["bands"])
    payload = {"benchmark": "supernet_rank_ensembles", "source": Path(args.result).name,
               "source_commit": source.get("provenance", {}).get("commit"), "ensembles": records}
    path = write_json(args.json, payload)
    write_markdown_table(path.with_suffix(".md"), "Supernet ranking: ensembles of fine-tuned scores (Kendall tau)",
                         ["data", "scores", *[f"tau {b}" for b in bands], "tau overall"], rows,
                         [f"from `{payload['source']}` (measured at commit {payload['source_commit']}): each "
                          "candidate's fine-tuned AUC averaged over the listed supernets, against the mean of its "
                          "two stand-alone seeds; no training in this script",
                          "command: `python benchmarks/supernet_rank_ensembles.py`"])
    print(path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
