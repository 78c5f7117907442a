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

from ihas_lightning import BackboneConfig, DataConfig, RunConfig, run_pipeline
from ihas_lightning.experiments.transfer import TransferConfig, run_transfer
from ihas_lightning.run_config import RetrainConfig, TrainerConfig

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

    config = RunConfig(out=args.out, data=DataConfig(args.data, format=args.format, rows=args.rows),
                       model=BackboneConfig("DeepFM", dim=16, dnn_hidden_units=(64, 32), seed=0),
                       retrain=RetrainConfig(epochs=max(1, args.epochs - 1)),
                       trainer=TrainerConfig(epochs=args.epochs, quiet=True), baseline_epochs=args.epochs)
    run_pipeline(config)
    targets = tuple(b.strip() for b in args.targets.split(",") if b.strip())
    result = run_transfer(args.out, TransferConfig(backbones=targets, seeds=args.seeds), quiet=True)
    for row in result["rows"]:
        ihas_auc, uniform, matched = (row[v]["test_auc"]["mean"] for v in ("ihas", "uniform", "matched"))
        share = row["ihas"]["embedding_params"] / row["uniform"]["embedding_params"]
        print(f"{row['backbone']:>8}: iHAS {ihas_auc:.4f} at {share:.0%} of uniform-16's embedding parameters "
              f"(uniform-16 {uniform:.4f}, matched d={row['matched']['dim']} {matched:.4f})")


if __name__ == "__main__":
    main()
