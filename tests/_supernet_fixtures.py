"""A tiny learnable data set for the supernet tests: 3 fields of vocabulary 10 and one dense field."""

from __future__ import annotations

import numpy as np

from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.data.encoders import EncodedColumns, FeatureEncoder
from ihas_lightning.data.schema import Schema

SCHEMA = Schema(label="label", sparse=("A", "B", "C"), dense=("x",))
VOCAB = 10


def tiny_columns(n: int, seed: int) -> EncodedColumns:
    """``n`` rows (ids 2..11); the click depends on A x B and on C."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(n, 3))
    logit = np.where((ids[:, 0] + ids[:, 1]) % 3 == 0, 1.5, -1.0) + 0.3 * (ids[:, 2] % 2)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return EncodedColumns(labels, (ids + 2).astype(np.int64), rng.random((n, 1)).astype(np.float32),
                          np.zeros((n, 0), dtype=np.int64))


def tiny_datamodule() -> CTRDataModule:
    """512 training, 256 validation and 256 test rows, batches of 64."""
    encoder = FeatureEncoder.for_integer_ids(SCHEMA, {f: VOCAB for f in SCHEMA.sparse})
    splits = {"train": tiny_columns(512, 1), "val": tiny_columns(256, 2), "test": tiny_columns(256, 3)}
    return CTRDataModule.from_encoded(splits, encoder, batch_size=64, seed=0)
