"""Keep the ``ihas`` commands' output to what they have to say: their tables, warnings and errors."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["BENIGN_WARNINGS", "CHATTY_LOGGERS", "quiet_output"]

# Warnings Lightning raises on every fit that do not apply to these commands.
BENIGN_WARNINGS = (
    # Lightning 2.6's own code calls a torch.utils._pytree API that torch deprecated: nothing a user can change
    r".*isinstance\(treespec, LeafSpec\)",
    # our loaders stream whole batches in-process (num_workers=0), so their length is exact
    r".*`IterableDataset` has `__len__` defined",
)
# Loggers whose INFO lines (accelerator banner, seeds, tips, "Restoring states ...") --quiet hides.
CHATTY_LOGGERS = ("pytorch_lightning", "lightning_fabric")


@contextlib.contextmanager
def quiet_output(quiet: bool) -> Iterator[None]:
    """Hide :data:`BENIGN_WARNINGS` always and, with ``quiet``, Lightning's INFO lines; restore both after."""
    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS] if quiet else []
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for pattern in BENIGN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
