"""Add the iHAS search to a DeepFM you already train in a Lightning ``Trainer``.

``train_plain`` is the "existing" script: a DeepCTR-Torch DeepFM (``BackboneModule``) on ``CTRDataModule``
in an ordinary ``pl.Trainer``. ``train_search`` is the same script after the swap; the whole diff is:

.. code-block:: diff

    -from ihas_lightning import BackboneModule, CTRDataModule
    +from ihas_lightning import CTRDataModule, SearchModule
    +from ihas_lightning.callbacks import GateStatisticsLogger, RegularizerWarmup, TemperatureAnnealing

    -model = BackboneModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=16, dnn_hidden_units=(64, 32))
    +model = SearchModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=16, dnn_hidden_units=(64, 32),
    +                     warmup_epochs=1, gate={"budget": 0.5}, gate_lr=1e-2)
     trainer = pl.Trainer(max_epochs=epochs, callbacks=[checkpoint,
    +                     TemperatureAnnealing(steps=gated_steps), RegularizerWarmup(steps=gated_steps // 5),
    +                     GateStatisticsLogger()],
                          logger=TensorBoardLogger(out))
     trainer.fit(model, dm)

The data module, the Trainer, its logger and checkpointing stay as they were. ``warmup_epochs`` trains the
plain backbone first; the callbacks anneal the gates' temperature, warm the sparsity/polarization terms
up and draw the gate heatmap in TensorBoard. After ``fit``, ``model.last_val_summary`` has the searched
gates' statistics on the validation split (mean active dimensions per field, distinct masks, ...), and
the checkpoint is what the clustering stage reads.

Run:
    python examples/drop_in_existing_trainer.py --rows 5000 --epochs 2
    python examples/drop_in_existing_trainer.py --rows 60000 --epochs 4      # a real search, ~1-2 min
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from ihas_lightning import BackboneModule, CTRDataModule, SearchModule
from ihas_lightning.callbacks import GateStatisticsLogger, RegularizerWarmup, TemperatureAnnealing

DIM, HIDDEN = 16, (64, 32)


def train_plain(dm: CTRDataModule, epochs: int, out: Path) -> dict:
    """The user's existing training script, unchanged."""
    model = BackboneModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=DIM, dnn_hidden_units=HIDDEN)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints" / "plain", save_last=True)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[checkpoint], logger=TensorBoardLogger(str(out), name="plain"),
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    return {"val_auc": float(trainer.callback_metrics["val_auc"])}


def train_search(dm: CTRDataModule, epochs: int, out: Path) -> dict:
    """The same script with the search swapped in: another module class and three callbacks."""
    warmup_epochs = 1 if epochs > 1 else 0
    gated_steps = max(1, (epochs - warmup_epochs) * len(dm.stream("train")))
    model = SearchModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=DIM, dnn_hidden_units=HIDDEN,
                         warmup_epochs=warmup_epochs, gate={"budget": 0.5}, gate_lr=1e-2)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints" / "search", save_last=True)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[
        checkpoint,
        TemperatureAnnealing(steps=max(1, int(0.8 * gated_steps))),
        RegularizerWarmup(steps=max(1, gated_steps // 5)),
        GateStatisticsLogger(),
    ], logger=TensorBoardLogger(str(out), name="search"), enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    summary = model.last_val_summary or {}
    return {"val_auc": float(trainer.callback_metrics["val_auc"]),
            "mean_active_dims": summary.get("mean_active_dims"),
            "mean_active_dims_per_field": summary.get("mean_active_dims_per_field"),
            "distinct_masks": summary.get("distinct_masks"),
            "expected_param_share": summary.get("expected_param_share"),
            "checkpoint": str(checkpoint.last_model_path)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="A DeepFM Lightning script, then the same with the iHAS search")
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows (train + val + test)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", default=None, help="logs and checkpoints (default: a temporary folder)")
    parser.add_argument("--cache-dir", default=None, help="encoded-data cache (default ~/.cache/ihas_lightning)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ihas_drop_in_"))
    pl.seed_everything(args.seed, workers=True)
    dm = CTRDataModule("synthetic", rows=args.rows, batch_size=args.batch_size, seed=args.seed,
                       cache_dir=args.cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    results = {"plain": train_plain(dm, args.epochs, out)}
    pl.seed_everything(args.seed, workers=True)
    results["search"] = train_search(dm, args.epochs, out)
    print(json.dumps(results, indent=2))
    print(f"TensorBoard: tensorboard --logdir {out}")
    return results


if __name__ == "__main__":
    main()
