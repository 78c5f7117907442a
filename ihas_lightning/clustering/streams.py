"""Re-iterable streams of batches for the clustering stage (k-means needs several passes), and the checks
and re-batching that k-means and :func:`~ihas_lightning.clustering.cluster` share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["Stream", "as_rows", "is_int", "rechunk", "reservoir_sample", "stream_passes"]

Stream = Union[Callable[[], Iterable[Tensor]], Iterable[Tensor], Tensor]
"""A re-iterable source of ``(n, d)`` batches: a callable returning a fresh iterator (preferred), a list,
a DataLoader, or one tensor (a single batch). One-shot iterators are refused: k-means needs several passes."""


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never a count or a seed here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def stream_passes(stream: Stream, what: str) -> Callable[[], Iterator[Tensor]]:
    """A function that starts a fresh pass over ``stream``; refuses one-shot iterators up front."""
    if isinstance(stream, Tensor):
        return lambda: iter((stream,))
    if callable(stream):
        return lambda: iter(stream())  # type: ignore[operator]
    if isinstance(stream, Iterator):
        raise TypeError(
            f"{what} is a one-shot iterator ({type(stream).__name__}); k-means needs several passes: "
            "pass a callable returning a fresh iterator, or a list/DataLoader"
        )
    if isinstance(stream, Iterable):
        return lambda: iter(stream)
    raise TypeError(f"{what} must be a callable returning an iterator of tensors, got {type(stream).__name__}")


def as_rows(x: Any, what: str, index: int, width: int | None) -> Tensor:
    """Batch ``index`` as a float ``(n, d)`` tensor; ``(n, F, D)`` masks/embeddings are flattened."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} batch {index}: expected a tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.flatten(1)  # (B, F, D) -> (B, F*D)
    if x.dim() != 2:
        raise ValueError(f"{what} batch {index}: expected shape (n, d) or (n, F, D), got {tuple(x.shape)}")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{what} batch {index}: has {x.shape[1]} columns, expected {width}")
    if not x.is_floating_point():
        x = x.float()
    return x


def rechunk(batches: Iterator[Tensor], size: int, what: str, width: int | None) -> Iterator[Tensor]:
    """Re-cut a stream into batches of exactly ``size`` rows (the last may be shorter).

    Everything downstream (random keys, updates) then sees the same mini-batches however the caller
    batched the stream, so a fit is independent of the stream's batching.
    """
    buffer: list[Tensor] = []
    held = 0
    device = None
    for i, x in enumerate(batches):
        x = as_rows(x, what, i, width)
        width = x.shape[1]
        device = x.device if device is None else device
        buffer.append(x.to(device))
        held += x.shape[0]
        while held >= size:
            cat = torch.cat(buffer) if len(buffer) > 1 else buffer[0]
            yield cat[:size]
            buffer, held = [cat[size:]], held - size
    if held:
        yield torch.cat(buffer)


def reservoir_sample(chunks: Iterable[Tensor], size: int, gen: torch.Generator) -> Tensor:
    """A uniform sample without replacement of ``size`` rows in one pass (random keys, keep the smallest)."""
    kept: Tensor | None = None  # (m, d)
    keys = torch.empty(0, dtype=torch.float64)
    for x in chunks:
        new_keys = torch.rand(x.shape[0], dtype=torch.float64, generator=gen)  # CPU: same on any device
        pool = x if kept is None else torch.cat([kept, x])
        all_keys = torch.cat([keys, new_keys])
        if all_keys.numel() > size:
            keys, idx = torch.topk(all_keys, size, largest=False, sorted=True)
            kept = pool[idx.to(pool.device)]
        else:
            kept, keys = pool, all_keys
    if kept is None:
        raise ValueError("the stream yielded no batches")
    return kept


