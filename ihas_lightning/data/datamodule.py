"""``CTRDataModule``: raw files (or the synthetic generator) -> encoded on-disk cache -> whole-tensor batches.

``prepare_data`` (rank 0 only) reads, splits, fits the encoders on the training split and writes the
cache; ``setup`` (every rank) opens it. The cache sits under a fingerprint of everything that defines it
(the options, the absolute input paths and the content of every input file), so a second run with the same
options and data reuses it, and a run on edited data does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil
import pytorch_lightning as pl
from torch.utils.data import DataLoader
from typing_extensions import override

from .cache import EncodedStore, EncodedWriter, save_encoded
from .config import DataConfig
from .encoders import EncodedColumns, FeatureEncoder, FieldVocabulary
from .fingerprint import content_fingerprint
from .loader import BatchStream, StreamLoader
from .readers import FORMATS, read_data
from .schema import RawColumns, Schema
from .synthetic import SyntheticCTR
from .synthetic_config import SyntheticConfig

__all__ = ["CTRDataModule", "check_both_classes", "remove_stale_temporaries", "split_rows"]

SPLITS = ("train", "val", "test")
# A model is trained on train and chosen by val's AUC, undefined with one class (torchmetrics reports 0.0
# and the search would pick an epoch by it). The test split may hold unlabeled rows (predictions only).
_NEED_BOTH_CLASSES = ("train", "val")
_IN_MEMORY_ROWS = 2_000_000


def split_rows(num_rows: int, shares: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Seeded random split of ``range(num_rows)`` into parts of the given shares (the rest goes first)."""
    order = np.random.default_rng(seed).permutation(num_rows)
    sizes = [int(round(num_rows * s)) for s in shares]
    first = num_rows - sum(sizes)
    if first <= 0 or min(sizes, default=1) <= 0:
        raise ValueError(f"cannot split {num_rows} rows into shares {shares}: a part would be empty")
    bounds = np.cumsum([first, *sizes])[:-1]
    return [np.sort(part) for part in np.split(order, bounds)]


def check_both_classes(split: str, labels: np.ndarray, data: str) -> None:
    """A ValueError naming the split and its label counts when ``labels`` (0/1) hold only one class."""
    positives = int(np.count_nonzero(labels))
    if positives == 0 or positives == len(labels):
        raise ValueError(f"the {split} split of '{data}' has {positives} positive and {len(labels) - positives} "
                         f"negative labels: AUC needs both classes (more rows, another seed or val_share)")


class CTRDataModule(pl.LightningDataModule):
    """CTR data for any of our modules.

    Args:
        data: a data file or folder, or ``"synthetic"`` for the bundled generator.
        format: reader name (``criteo``, ``criteo-1tb``, ``avazu``, ``movielens-100k``, ``movielens-1m``,
            ``libfm``, ``csv``, ``tsv``, ``parquet``, ``synthetic``); guessed from ``data`` when omitted.
        schema: schema file (JSON/YAML) for ``csv``/``tsv``/``parquet``.
        test: a separate test file; the validation split then comes from ``data``.
        rows: rows of synthetic data (train + val + test).
        val_share, test_share: shares of ``data`` held out for validation and test.
        seed: split and shuffle seed.
        min_count: categories rarer than this in training map to the OOV id.
        batch_size: training batch size; evaluation uses ``eval_batch_size`` (default 4x).
        cache_dir: where encoded caches live (default ``~/.cache/ihas_lightning``).
        in_memory: load the cache into RAM (default: when it has fewer than 2M rows).
        synthetic_config: the shape of the synthetic rows (fields, cardinalities, Zipf exponent, ...) when
            ``data`` is ``"synthetic"``; ``None`` is ``SyntheticConfig()`` (8 sparse + 4 dense fields). Part of
            the cache fingerprint unless it equals the default, so caches made without it are reused. Python
            API only: ``DataConfig`` (and so ``run.json`` and the CLI) does not carry it.

    Example:
        >>> dm = CTRDataModule("../shared/data/criteo/train-10k.txt", format="criteo", batch_size=512)
        >>> dm.prepare_data(); dm.setup("fit"); dm.vocab_sizes["C1"]
    """

    def __init__(self, data: str = "synthetic", format: str | None = None, schema: str | None = None,
                 test: str | None = None, rows: int = 60_000, val_share: float = 0.1, test_share: float = 0.1,
                 seed: int = 0, min_count: int = 1, batch_size: int = 1024, eval_batch_size: int | None = None,
                 cache_dir: str | None = None, in_memory: bool | None = None,
                 synthetic_config: SyntheticConfig | None = None) -> None:
        super().__init__()
        self.format = format or _guess_format(data)
        if self.format not in (*FORMATS, "synthetic"):
            raise ValueError(f"unknown data format {self.format!r}; expected one of {', '.join(FORMATS)}, synthetic")
        if synthetic_config is not None:
            if not isinstance(synthetic_config, SyntheticConfig):
                raise TypeError(f"synthetic_config must be a SyntheticConfig, got {type(synthetic_config).__name__}")
            if self.format != "synthetic":
                raise ValueError(f"synthetic_config applies to synthetic data only, not format {self.format!r}")
        if self.format != "synthetic" and not Path(data).exists():
            raise FileNotFoundError(f"data '{data}' does not exist")
        if not 0 < val_share < 1 or not 0 <= test_share < 1 or val_share + test_share >= 1:
            raise ValueError(f"val_share={val_share} and test_share={test_share} must be in (0, 1) with sum < 1")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.schema_path, self.test = data, schema, test
        self.rows, self.val_share, self.test_share = rows, val_share, test_share
        self.seed, self.min_count = seed, min_count
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        self.cache_root = Path(cache_dir or os.environ.get("IHAS_CACHE", Path.home() / ".cache" / "ihas_lightning"))
        self.in_memory = in_memory
        self.synthetic_config = synthetic_config
        self.encoder: FeatureEncoder | None = None
        self.splits: dict[str, EncodedColumns | EncodedStore] = {}
        self._contents: dict[str, str] = {}                   # input path -> content fingerprint

    @classmethod
    def from_config(cls, config: DataConfig) -> CTRDataModule:
        """A data module with the arguments of ``config``."""
        return cls(**asdict(config))

    @classmethod
    def from_encoded(cls, splits: dict[str, EncodedColumns], encoder: FeatureEncoder, batch_size: int = 1024,
                     seed: int = 0, eval_batch_size: int | None = None) -> CTRDataModule:
        """A data module over splits already in memory (tests, notebooks)."""
        module = cls("synthetic", format="synthetic", batch_size=batch_size, seed=seed,
                     eval_batch_size=eval_batch_size)
        module.encoder, module.splits = encoder, dict(splits)
        return module

    @property
    def cache_dir(self) -> Path:
        return self.cache_root / self._fingerprint()

    @property
    def schema(self) -> Schema:
        self._require_setup()
        return self.encoder.schema

    @property
    def vocab_sizes(self) -> dict[str, int]:
        self._require_setup()
        return self.encoder.vocab_sizes

    @override
    def prepare_data(self) -> None:
        if self.splits or (self.cache_dir / "encoder.json").exists():
            return
        remove_stale_temporaries(self.cache_root)
        target = self.cache_dir.with_name(f"{self.cache_dir.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        target.mkdir(parents=True, exist_ok=True)
        try:
            if self.format == "synthetic":
                encoder = self._write_synthetic(target)
            else:
                raw_splits = self._read_splits()
                encoder = FeatureEncoder(raw_splits["train"].schema, self.min_count).fit(raw_splits["train"])
                for name, raw in raw_splits.items():
                    save_encoded(target / name, encoder.transform(raw))
            encoder.save(target / "encoder.json")
            (target / "options.json").write_text(json.dumps(self._options(), indent=2))
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # a failed run leaves no half-written folder behind
            raise
        try:
            os.replace(target, self.cache_dir)  # atomic: a half-written cache is never taken for a whole one
        except OSError:
            shutil.rmtree(target, ignore_errors=True)
            if not (self.cache_dir / "encoder.json").exists():
                raise
            # Another process wrote the same cache (same fingerprint, so the same content) first: use it.

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.encoder = FeatureEncoder.load(self.cache_dir / "encoder.json")
        for name in SPLITS:
            store = EncodedStore(self.cache_dir / name)
            if name in _NEED_BOTH_CLASSES:
                check_both_classes(name, store.read_labels(), self.data)
            in_memory = self.in_memory if self.in_memory is not None else len(store) <= _IN_MEMORY_ROWS
            self.splits[name] = store.read_all() if in_memory else store

    def split(self, name: str) -> EncodedColumns | EncodedStore:
        self._require_setup()
        return self.splits[name]

    def stream(self, name: str, *, shuffle: bool | None = None, batch_size: int | None = None) -> BatchStream:
        """Batches of one split; the trainer, when attached, supplies the epoch and the DDP rank."""
        self._require_setup()
        is_train = name == "train"
        return BatchStream(self.splits[name], batch_size or (self.batch_size if is_train else self.eval_batch_size),
                           shuffle=is_train if shuffle is None else shuffle, seed=self.seed,
                           epoch_fn=self._epoch, rank_fn=self._rank)

    @override
    def train_dataloader(self) -> DataLoader:
        return StreamLoader(self.stream("train"))

    @override
    def val_dataloader(self) -> DataLoader:
        return StreamLoader(self.stream("val"))

    @override
    def test_dataloader(self) -> DataLoader:
        return StreamLoader(self.stream("test"))

    @override
    def predict_dataloader(self) -> DataLoader:
        return StreamLoader(self.stream("test"))

    @override
    def state_dict(self) -> dict:
        return {"seed": self.seed, "fingerprint": self._fingerprint()}

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def _require_setup(self) -> None:
        if self.encoder is None:
            raise RuntimeError("CTRDataModule: call prepare_data() and setup() first (the Trainer does this)")

    def _options(self) -> dict:
        options = {"data": self.data, "format": self.format, "schema": self.schema_path, "test": self.test,
                   "val_share": self.val_share, "test_share": self.test_share, "seed": self.seed,
                   "min_count": self.min_count, "version": 1}
        if self.format == "synthetic":
            options["rows"] = self.rows
            options["synthetic_encoder"] = "tokens-logstd"  # caches written before the token encoder are not reused
            if self.synthetic_config is not None and self.synthetic_config != SyntheticConfig():
                options["synthetic_config"] = asdict(self.synthetic_config)
        for key in ("data", "test", "schema"):
            if options[key] and Path(options[key]).exists():
                path = Path(options[key]).resolve()
                options[key] = str(path)
                if str(path) not in self._contents:       # hashed once per module: a run sees one version
                    self._contents[str(path)] = content_fingerprint(path)
                options[f"{key}_content"] = self._contents[str(path)]
        return options

    def _fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self._options(), sort_keys=True).encode()).hexdigest()[:16]

    def _read_splits(self) -> dict[str, RawColumns]:
        schema = Schema.load(self.schema_path) if self.schema_path else None
        raw = read_data(self.data, self.format, schema)
        if self.test:
            test = read_data(self.test, self.format, schema)
            train_rows, val_rows = split_rows(len(raw), (self.val_share,), self.seed)
            return {"train": raw.take(train_rows), "val": raw.take(val_rows), "test": test}
        train_rows, val_rows, test_rows = split_rows(len(raw), (self.val_share, self.test_share), self.seed)
        return {"train": raw.take(train_rows), "val": raw.take(val_rows), "test": raw.take(test_rows)}

    def _write_synthetic(self, target: Path) -> FeatureEncoder:
        generator = SyntheticCTR(self.synthetic_config, seed=self.seed)
        sizes = {"val": int(self.rows * self.val_share), "test": int(self.rows * self.test_share)}
        sizes = {"train": self.rows - sizes["val"] - sizes["test"], **sizes}
        schema = generator.schema
        # The encoder turns the generator's raw rows (``SyntheticCTR.raw``: hex tokens, counts) into exactly
        # what the cache holds, so ``predict_raw`` on them sees what training saw: ids + 2, and dense counts
        # log1p-ed and standardized with statistics of the first training chunk (raw counts in the hundreds
        # make DCN's cross network overflow).
        encoder = FeatureEncoder(schema)
        encoder.vocabularies = {name: FieldVocabulary([str(t) for t in generator.tokens(f)])
                                for f, name in enumerate(schema.sparse)}
        first = next(iter(generator.chunks(min(sizes["train"], 200_000), seed=self.seed * 3 + 1)))
        logged = np.where(first.dense_missing, np.nan, np.log1p(np.maximum(first.dense, 0.0)))
        encoder.dense_mean = np.nan_to_num(np.nanmean(logged, axis=0))
        std = np.nanstd(logged, axis=0)
        encoder.dense_std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        for offset, (name, size) in enumerate(sizes.items()):
            with EncodedWriter(target / name, size, len(schema.sparse), len(schema.dense)) as writer:
                for chunk in generator.chunks(size, seed=self.seed * 3 + offset + 1):
                    dense = (np.log1p(np.maximum(chunk.dense, 0.0)) - encoder.dense_mean) / encoder.dense_std
                    dense = np.where(chunk.dense_missing, 0.0, dense).astype(np.float32)
                    writer.write(EncodedColumns(chunk.labels, chunk.sparse + 2, dense,
                                                np.zeros((len(chunk.labels), 0), dtype=np.int64)))
        return encoder


# ``<fingerprint>.tmp-<host>-<pid>`` (``<fingerprint>.tmp<pid>`` before the host was in the name)
_TEMPORARY = re.compile(r"[0-9a-f]{16}\.tmp(?:-(?P<host>.+)-|)(?P<pid>\d+)")


def remove_stale_temporaries(cache_root: Path) -> list[Path]:
    """Delete the half-written cache folders of preparations that were killed (SIGKILL, out of memory, a
    lost node) and return them: those made on this host by a process that is no longer running. Folders of
    other hosts sharing the cache root are left alone (their processes cannot be checked from here)."""
    if not cache_root.is_dir():
        return []
    removed = []
    for folder in cache_root.iterdir():
        match = _TEMPORARY.fullmatch(folder.name)
        if not match or not folder.is_dir() or match["host"] not in (None, socket.gethostname()):
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not psutil.pid_exists(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _guess_format(data: str) -> str:
    if data == "synthetic":
        return "synthetic"
    path = Path(data)
    if path.is_dir() and (path / "u.data").exists():
        return "movielens-100k"
    if path.is_dir() and ((path / "ratings.dat").exists() or (path / "ratings.dat.gz").exists()):
        return "movielens-1m"
    suffix = path.suffix.lower()
    guesses = {".parquet": "parquet", ".libfm": "libfm", ".svm": "libfm", ".tsv": "tsv", ".csv": "csv"}
    if suffix in guesses:
        return guesses[suffix]
    raise ValueError(f"cannot guess the format of '{data}': pass format= (criteo, criteo-1tb, avazu, "
                     "movielens-100k, movielens-1m, libfm, csv, tsv, parquet, synthetic)")
