"""``DataConfig``: the arguments of a :class:`~ihas_lightning.data.CTRDataModule`, as one frozen value.

A run directory stores it in ``run.json`` (and a supernet's in ``supernet/data.json``) so that every later
stage reopens the same split from the same cache. It imports nothing from the data module itself.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataConfig"]


@dataclass(frozen=True)
class DataConfig:
    """Where the rows come from and how they are split and batched (see ``CTRDataModule`` for each field;
    it checks the values when it is built).

    Example:
        >>> dm = CTRDataModule.from_config(DataConfig("../shared/data/criteo/train-10k.txt", format="criteo"))
    """

    data: str = "synthetic"
    format: str | None = None
    schema: str | None = None
    test: str | None = None
    rows: int = 60_000
    val_share: float = 0.1
    test_share: float = 0.1
    seed: int = 0
    min_count: int = 1
    batch_size: int = 1024
    eval_batch_size: int | None = None
    cache_dir: str | None = None
    in_memory: bool | None = None
