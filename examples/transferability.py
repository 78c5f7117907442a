"""Search embedding dimensions on DeepFM, then transfer them to DCN and four other DeepCTR-Torch models.

1. ``ihas run``: search -> cluster -> retrain on DeepFM (synthetic data by default);
2. ``ihas transfer``: the searched router and per-group dimensions retrained on each target, against the
   target at uniform dimension 16 and at the uniform dimension with the same embedding parameters.

Quick (about a minute on a laptop core)::

    python examples/transferability.py --rows 6000 --epochs 2 --seeds 1

Fuller::

    python examples/transferability.py --data /path/to/ml-100k --format movielens-100k --epochs 4 --seeds 3

Outputs: OUT/transfer/transfer.json, transfer.md, transfer.png; TensorBoard logs under OUT/transfer/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ihas_lightning.cli import main as ihas

TARGETS = "DCN,DeepFM,WDL,NFM,PNN,AutoInt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--format", default=None)
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--targets", default=TARGETS)
    parser.add_argument("--out", default="runs/example_transfer")
    args = parser.parse_args()

    data = ["--data", args.data, "--rows", str(args.rows)] + (["--format", args.format] if args.format else [])
    schedule = ["--epochs", str(args.epochs), "--warmup-epochs", "1", "--retrain-epochs", str(max(1, args.epochs - 1)),
                "--baseline-epochs", str(args.epochs), "--dnn", "64,32", "--dim", "16", "--quiet"]
    if ihas(["run", *data, *schedule, "--backbone", "DeepFM", "--out", args.out]):
        raise SystemExit("ihas run failed")
    if ihas(["transfer", "--run", args.out, "--backbones", args.targets, "--seeds", str(args.seeds), "--quiet"]):
        raise SystemExit("ihas transfer failed")

    result = json.loads((Path(args.out) / "transfer" / "transfer.json").read_text())
    for row in result["rows"]:
        ihas_auc, uniform, matched = (row[v]["test_auc"]["mean"] for v in ("ihas", "uniform", "matched"))
        share = row["ihas"]["embedding_params"] / row["uniform"]["embedding_params"]
        print(f"{row['backbone']:>8}: iHAS {ihas_auc:.4f} at {share:.0%} of uniform-16's embedding parameters "
              f"(uniform-16 {uniform:.4f}, matched d={row['matched']['dim']} {matched:.4f})")


if __name__ == "__main__":
    main()
