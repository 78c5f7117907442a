"""Seeded noise generators that follow the device of the tensors they draw for, resumable from a checkpoint.

A generator's state fits only a generator of the same device type (the CPU's Mersenne Twister state is 5,056
bytes, CUDA's Philox state 16), so a state is saved with its device type and restored on that type alone; on
another (a search trained on a GPU whose gates are then evaluated on the CPU, or a run resumed on other
hardware) the stream starts from the seed, since its draws could not equal the other device's anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["generator_on", "generator_state", "state_device"]

_CPU_STATE_BYTES = torch.Generator().get_state().numel()


def state_device(state: Tensor | None, saved_device: str | None = None) -> str | None:
    """The device type a generator state belongs to: ``saved_device`` if the checkpoint recorded one, else
    read from its size (checkpoints written before the device type was saved)."""
    if state is None:
        return None
    return saved_device or ("cpu" if state.numel() == _CPU_STATE_BYTES else "cuda")


def generator_on(device: torch.device, seed: int, state: Tensor | None = None,
                 saved_device: str | None = None) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``, then set to ``state`` where that state is of
    ``device``'s type (see the module docstring)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    if state is not None and state_device(state, saved_device) == torch.device(device).type:
        generator.set_state(state)
    return generator


def generator_state(generator: torch.Generator | None, saved: Tensor | None,
                    saved_device: str | None = None) -> tuple[Tensor | None, str | None]:
    """What a checkpoint stores: the live ``generator``'s state and device type, else the state it would be
    restored from (``saved``, of ``saved_device``), still unused."""
    if generator is not None:
        return generator.get_state(), generator.device.type
    return saved, state_device(saved, saved_device)
