"""Row-wise (sparse) embedding updates: a step costs the rows a batch touches, not the size of the tables.

With ``embedding_updates="rowwise"`` (the default) every embedding table is an ``nn.Embedding(sparse=True)``:
backward gives a sparse gradient holding only the looked-up rows, and :class:`RowwiseAdam` updates those rows
and their two moment rows ("lazy" Adam, as ``torch.optim.SparseAdam``, TensorFlow's LazyAdam and
TorchRec/FBGEMM's fused row-wise optimisers do), while every dense-gradient parameter (DNN, cross network,
gates) takes the usual fused Adam step. With ``"dense"`` the tables give dense gradients and the optimiser is
exactly ``torch.optim.Adam(fused=True)``: every row of every table and of both moments is read and written at
every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import mmap

import torch
from torch import Tensor

__all__ = ["RowwiseAdam", "clip_gradients", "has_sparse_grad"]


class RowwiseAdam(torch.optim.Adam):
    """``torch.optim.Adam`` that also takes sparse gradients, updating only their rows (lazy Adam).

    Dense-gradient parameters get Adam's own (fused) step, bit for bit. A parameter with a sparse gradient
    (an ``nn.Embedding(sparse=True)`` table) has its gradient coalesced (duplicate ids summed) and only those
    rows of the parameter and of its ``exp_avg``/``exp_avg_sq`` are read and written; the bias correction
    uses the parameter's step count, as ``torch.optim.SparseAdam`` does. Rows a step does not touch keep their
    value and moments (dense Adam would still move them by their momentum). The state has Adam's keys and
    shapes, so ``state_dict``/``load_state_dict`` are Adam's and a checkpoint of either kind loads into the
    other. ``amsgrad``, ``maximize`` and ``weight_decay`` are not supported on sparse gradients.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = [(p, group) for group in self.param_groups for p in group["params"]
                  if p.grad is not None and p.grad.is_sparse]
        grads = [p.grad for p, _ in sparse]
        for p, _ in sparse:          # Adam's own step skips parameters without a gradient
            p.grad = None
        try:
            super().step()
        finally:
            for (p, _), grad in zip(sparse, grads):
                p.grad = grad
        for p, group in sparse:
            self._rowwise_step(p, group)
        return loss

    def _rowwise_step(self, param: Tensor, group: dict[str, Any]) -> None:
        if group["amsgrad"] or group["maximize"] or group["weight_decay"]:
            raise ValueError("RowwiseAdam: amsgrad, maximize and weight_decay are not supported for sparse "
                             "gradients; use embedding_updates='dense'")
        grad = param.grad.coalesce()
        rows, values = grad.indices()[0], grad.values()                                      # (n,), (n, d)
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = _lazy_zeros_like(param)
            state["exp_avg_sq"] = _lazy_zeros_like(param)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = state["step"].double()          # in float64, as Adam's Python floats: 1 - 0.999^t cancels
        bias1 = (1 - torch.pow(torch.as_tensor(beta1, dtype=step.dtype, device=step.device), step)).float()
        bias2 = (1 - torch.pow(torch.as_tensor(beta2, dtype=step.dtype, device=step.device), step)).float()
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        m = exp_avg.index_select(0, rows).lerp_(values, 1 - beta1)                           # (n, d)
        v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        exp_avg.index_copy_(0, rows, m)
        exp_avg_sq.index_copy_(0, rows, v)
        denom = (v.sqrt() / bias2.sqrt()).add_(group["eps"])
        param.index_add_(0, rows, m.div_(denom).mul_(-group["lr"] / bias1))


def _lazy_zeros_like(param: Tensor) -> Tensor:
    """Zeros shaped as ``param``. On the CPU an anonymous memory map: the OS hands out (4 KiB) zero pages on
    first write, so a moment buffer costs time and memory for the rows that are updated, not for the whole
    table (``torch.zeros`` writes every byte, and numpy's calloc asks for 2 MiB huge pages that random rows
    touch all of: seconds and GiBs for a Criteo-sized table at the first step)."""
    if param.device.type == "cpu" and param.dtype == torch.float32 and param.numel() >= 1 << 20:
        buffer = mmap.mmap(-1, param.numel() * 4)
        return torch.frombuffer(buffer, dtype=torch.float32).view(param.shape)
    return torch.zeros_like(param, memory_format=torch.preserve_format)


def has_sparse_grad(parameters: Iterable[Tensor]) -> bool:
    return any(p.grad is not None and p.grad.is_sparse for p in parameters)


@torch.no_grad()
def clip_gradients(parameters: Iterable[Tensor], clip_val: float, algorithm: str = "norm") -> None:
    """Lightning's gradient clipping (``"norm"``: total 2-norm, ``"value"``: clamp) over dense and sparse
    gradients alike (``clip_grad_norm_`` has no sparse kernel); sparse ones are coalesced first, so a row
    looked up twice counts with its summed gradient."""
    params = [p for p in parameters if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    values = [p.grad.values() if p.grad.is_sparse else p.grad for p in params]
    if algorithm == "value":
        for value in values:
            value.clamp_(-clip_val, clip_val)
        return
    if algorithm != "norm":
        raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {algorithm!r}")
    if not values:
        return
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in values]))
    scale = (clip_val / (total + 1e-6)).clamp(max=1.0)
    for value in values:
        value.mul_(scale.to(value.device))

