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

    def __post_init__(self) -> None:
        for name, minimum in (("rows", 1), ("min_count", 1), ("batch_size", 1), ("seed", 0)):
            _check_count(name, getattr(self, name), minimum)
        if self.eval_batch_size is not None:
            _check_count("eval_batch_size", self.eval_batch_size, 1)
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"data must be a file or folder path, or 'synthetic', got {self.data!r}")

    @property
    def synthetic(self) -> bool:
        """The bundled generator (``rows`` applies), not a file (read whole)."""
        return self.data == "synthetic" or self.format == "synthetic"


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
