"""Where a supernet's candidates are scored (``ihas subnet --device``, ``ihas pim --device``).

Scoring is not a Lightning fit, so it has no ``Trainer(accelerator=...)``: the module and its batches are moved by
hand, and a device that is not there should fail before any data is read, naming what is available.
"""

from __future__ import annotations

import torch

__all__ = ["DEVICE_CHOICES", "resolve_device"]

DEVICE_CHOICES = "cpu, cuda, cuda:N, gpu (= cuda) or auto (cuda where available, else cpu)"


def resolve_device(name: str | torch.device) -> torch.device:
    """The ``torch.device`` of ``name`` (:data:`DEVICE_CHOICES`); a ValueError names what is wrong and what exists."""
    if isinstance(name, torch.device):
        text = str(name)
    elif isinstance(name, str):
        text = name.strip().lower()
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(name).__name__}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "gpu" or text.startswith("gpu:"):
        text = "cuda" + text[3:]
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"device must be {DEVICE_CHOICES}; got '{name}'") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device '{name}': scoring runs on the CPU or a CUDA GPU only ({DEVICE_CHOICES})")
    if not torch.cuda.is_available():
        raise ValueError(f"device '{name}': CUDA is not available here (torch {torch.__version__}, "
                         f"torch.cuda.is_available() is False); use cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device '{name}': this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device
