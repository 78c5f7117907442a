"""Checkpoint files that are either the old one or the new one, never half of the new one.

Lightning's ``TorchCheckpointIO`` writes local files inside an fsspec transaction: the bytes go to a file
made by ``tempfile.mkstemp()`` in the *system* temp folder, then ``shutil.move`` puts it in place. When that
folder is on another filesystem than the run directory (a tmpfs ``/tmp``, a container's overlay, a network
volume), the move is a copy: a crash or a full disk during that copy leaves a truncated ``last.ckpt`` and
no previous one to resume from. :class:`AtomicCheckpointIO` writes next to the target, flushes it to disk,
and ``os.replace``s it (atomic within one filesystem, POSIX and Windows).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins.io import TorchCheckpointIO
from typing_extensions import override

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through a temporary file in the target's own folder.

    Remote paths (``s3://``, ...) keep Lightning's own behavior.

    Example:
        >>> trainer = pl.Trainer(plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint(save_last=True)])
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        protocol = get_filesystem(path).protocol
        if "file" not in (protocol if isinstance(protocol, tuple) else (protocol,)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
