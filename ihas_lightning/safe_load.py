"""Reading torch files without running code from them.

``torch.load(weights_only=False)`` unpickles arbitrary objects: a crafted ``.pt`` whose pickle names a
function (a ``__reduce__`` payload) runs it on load. Every torch file this package reads (model files,
``--init-from`` checkpoints, warm-start checkpoints) goes through :func:`load_torch_file`, which loads with
``weights_only=True``: tensors, plain containers, numbers and strings only. What we save holds nothing else
(hyperparameters and encoders are saved as plain dicts and lists), so our own files always load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["load_checkpoint_state", "load_torch_file"]

_ZIP_MAGIC = b"PK\x03\x04"


def load_torch_file(path: str | Path, what: str = "a torch file",
                    map_location: str | torch.device = "cpu") -> Any:
    """The object in ``path``, loaded with ``weights_only=True`` (memory-mapped when it is a zip-format file).

    A file that is not a torch file, or whose pickle holds anything but tensors and plain values, raises a
    ValueError naming ``path`` and ``what`` it was meant to be (``"an IHASModel file"``); nothing in the
    file runs. A missing or unreadable file raises the OSError as it is.
    """
    with open(path, "rb") as file:                 # OSError (missing, a directory, no permission) as it is
        zipped = file.read(4) == _ZIP_MAGIC
    try:
        # mmap: tensors stay in the page cache until copied into a module (a large checkpoint is not read
        # whole when only its state_dict is wanted); only zip-format files (torch >= 1.6) can be mapped.
        return torch.load(path, map_location=map_location, weights_only=True, mmap=zipped)
    except OSError:
        raise
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError by file kind
        raise ValueError(f"'{path}' is not {what} ({_reason(error)})") from None


def load_checkpoint_state(path: str | Path, what: str = "a checkpoint",
                          map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or of any torch file holding a dict with one)."""
    data = load_torch_file(path, what, map_location)
    state = data.get("state_dict") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        found = sorted(map(str, data))[:5] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"'{path}' is not {what}: it holds no 'state_dict' (found {found})")
    return state


def _reason(error: Exception) -> str:
    """The line of torch's message that says what was refused (the rest is advice we do not follow)."""
    advice = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith(advice)]
    refused = [line for line in lines if "GLOBAL" in line]
    if refused:
        return f"it holds objects other than tensors and plain values, refused without loading them: {refused[0]}"
    if isinstance(error, EOFError) or not lines:
        return f"not a torch file: empty or truncated ({type(error).__name__})"
    return f"not a torch file: {type(error).__name__}: {lines[0][:200]}"
