"""The iHAS dimension search in a LightningModule written the DeepCTR-Torch way: one callback, nothing else.

``DeepFMClickModule`` is what a DeepCTR-Torch user writes: feature columns, ``DeepFM(linear_feature_columns,
dnn_feature_columns)``, and a ``training_step`` on DeepCTR's concatenated input ``x`` (the tensor its ``fit``
builds from the columns in ``get_feature_names`` order), with a BCE loss. The data are MovieLens-100K ratings
(label: rating >= 4), label-encoded with scikit-learn as DeepCTR's own examples do. The search is the same
script with one more callback:

.. code-block:: diff

     trainer = pl.Trainer(max_epochs=epochs,
    +                     callbacks=[DimensionSearch(budget=0.5)])
     trainer.fit(module, train_loader, val_loader)
    +trainer.callbacks[0].export_search_checkpoint("searched.ckpt")     # what the clustering stage reads

Run:
    python examples/deepctr_user_module.py --rows 20000 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from deepctr_torch.inputs import DenseFeat, SparseFeat, get_feature_names
from deepctr_torch.models import DeepFM
from sklearn.preprocessing import LabelEncoder, MinMaxScaler
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import BinaryAUROC

from ihas_lightning.callbacks import DimensionSearch
from ihas_lightning.paths import shared_data_dir

SPARSE = ["user_id", "movie_id", "gender", "age", "occupation", "zip"]
DENSE = ["timestamp"]


def load_movielens(directory: Path, rows: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The first ``rows`` ratings of MovieLens-100K joined with the users; label: rating >= 4."""
    ratings = np.loadtxt(directory / "u.data", dtype=np.int64, max_rows=rows)                 # user, item, rating, ts
    users = {}
    for line in (directory / "u.user").read_text(encoding="latin-1").splitlines():
        user, age, gender, occupation, zip_code = line.split("|")
        users[int(user)] = (age, gender, occupation, zip_code)
    joined = [users[u] for u in ratings[:, 0]]
    data = {"user_id": ratings[:, 0], "movie_id": ratings[:, 1], "age": np.array([j[0] for j in joined]),
            "gender": np.array([j[1] for j in joined]), "occupation": np.array([j[2] for j in joined]),
            "zip": np.array([j[3] for j in joined]), "timestamp": ratings[:, 3].astype(np.float64)}
    return data, (ratings[:, 2] >= 4).astype(np.float32)


def feature_columns(data: dict[str, np.ndarray], embedding_dim: int) -> list:
    """DeepCTR's preprocessing: label-encode the sparse fields, min-max scale the dense ones."""
    for feat in SPARSE:
        data[feat] = LabelEncoder().fit_transform(data[feat])
    for feat in DENSE:
        data[feat] = MinMaxScaler().fit_transform(data[feat].reshape(-1, 1)).ravel()
    return ([SparseFeat(feat, int(data[feat].max()) + 1, embedding_dim=embedding_dim) for feat in SPARSE]
            + [DenseFeat(feat, 1) for feat in DENSE])


class DeepFMClickModule(pl.LightningModule):
    """A DeepFM on DeepCTR's concatenated input, trained with BCE (the user's own code, not ours)."""

    def __init__(self, linear_feature_columns: list, dnn_feature_columns: list, lr: float = 1e-3,
                 seed: int = 1024) -> None:
        super().__init__()
        self.model = DeepFM(linear_feature_columns, dnn_feature_columns, dnn_hidden_units=(64, 32), task="binary",
                            seed=seed, device="cpu")
        self.lr = lr
        self.val_auroc = BinaryAUROC()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).squeeze(-1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.binary_cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_auroc.update(self(x), y.long())
        self.log("val_auc", self.val_auroc, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loaders(rows: int, embedding_dim: int, batch_size: int) -> tuple[list, DataLoader, DataLoader]:
    """Feature columns and the train/validation loaders of DeepCTR's concatenated input (80/20 split)."""
    data, labels = load_movielens(shared_data_dir() / "movielens" / "ml-100k", rows)
    columns = feature_columns(data, embedding_dim)
    x = np.stack([data[name] for name in get_feature_names(columns)], axis=1).astype(np.float32)   # (N, columns)
    split = int(0.8 * len(x))
    train = TensorDataset(torch.from_numpy(x[:split]), torch.from_numpy(labels[:split]))
    val = TensorDataset(torch.from_numpy(x[split:]), torch.from_numpy(labels[split:]))
    return columns, DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=4096)


def train(columns: list, train_loader: DataLoader, val_loader: DataLoader, epochs: int, seed: int,
          search: DimensionSearch | None = None) -> tuple[DeepFMClickModule, float]:
    """Fit the user's module (with the search callback when given); returns it and its validation AUC."""
    pl.seed_everything(seed, workers=True)
    module = DeepFMClickModule(columns, columns, seed=seed)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[search] if search else [], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         deterministic=True)
    trainer.fit(module, train_loader, val_loader)
    return module, float(trainer.callback_metrics["val_auc"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="DeepFM in a user's LightningModule, then with DimensionSearch")
    parser.add_argument("--rows", type=int, default=20_000, help="MovieLens-100K ratings to read")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--out", default=None, help="where the searched checkpoint goes (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    columns, train_loader, val_loader = loaders(args.rows, args.embedding_dim, args.batch_size)
    _, plain_auc = train(columns, train_loader, val_loader, args.epochs, args.seed)
    search = DimensionSearch(budget=args.budget)
    module, search_auc = train(columns, train_loader, val_loader, args.epochs, args.seed, search)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ihas_deepctr_"))
    checkpoint = search.export_search_checkpoint(out / "searched.ckpt")
    summary = search.last_val_summary or {}
    results = {"plain_val_auc": plain_auc, "search_val_auc": search_auc,
               "expected_param_share": summary.get("expected_param_share"),
               "mean_active_dims_per_field": summary.get("mean_active_dims_per_field"),
               "distinct_masks": summary.get("distinct_masks"), "checkpoint": str(checkpoint)}
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
