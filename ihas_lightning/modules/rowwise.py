"""Row-wise (sparse) embedding updates: a step costs the rows a batch touches, not the size of the tables.

With ``embedding_updates="rowwise"`` (the default) every embedding table is an ``nn.Embedding(sparse=True)``:
backward gives a sparse gradient holding only the looked-up rows, and :class:`RowwiseAdam` updates those rows
and their two moment rows ("lazy" Adam, as ``torch.optim.SparseAdam``, TensorFlow's LazyAdam and
TorchRec/FBGEMM's fused row-wise optimisers do), while every dense-gradient parameter (DNN, cross network,
gates) takes the usual fused Adam step. DeepCTR-Torch's L2 on such a table is the optimiser's weight decay on
the rows of the step (``CTRBackbone.row_l2``, set per step by ``CTRModule.on_before_optimizer_step``). With
``"dense"`` the tables give dense gradients and the optimiser is exactly ``torch.optim.Adam(fused=True)``:
every row of every table and of both moments is read and written at every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import mmap

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

__all__ = ["RowwiseAdam", "clip_gradients", "has_sparse_grad"]


class RowwiseAdam(torch.optim.Adam):
    """``torch.optim.Adam`` that also takes sparse gradients, updating only their rows (lazy Adam).

    Dense-gradient parameters get Adam's own (fused) step, bit for bit. For a parameter with a sparse gradient
    (an ``nn.Embedding(sparse=True)`` table) duplicate ids are summed and only those rows of the parameter and
    of its ``exp_avg``/``exp_avg_sq`` are read and written; the bias correction uses the parameter's step
    count, as ``torch.optim.SparseAdam`` does. The tables of a param group are updated together (one
    deduplication and one pass of moment arithmetic over all their rows), which makes the step's cost follow
    the rows touched rather than the number of tables. Rows a step does not touch keep their
    value and moments (dense Adam would still move them by their momentum). ``weight_decay`` on a sparse
    gradient is Adam's coupled L2 on the rows it holds (``g += weight_decay * w`` for those rows, once each):
    the row-wise L2 of FBGEMM's fused optimisers, which our modules use for DeepCTR-Torch's ``l2_reg_*`` on
    row-wise tables. The state has Adam's keys and shapes, so ``state_dict``/``load_state_dict`` are Adam's
    and a checkpoint of either kind loads into the other. ``amsgrad`` and ``maximize`` are not supported on
    sparse gradients.

    A param group with ``freeze_zero_grad=True`` leaves every element whose gradient is exactly 0 this step
    where it is, value and both moments (for a table: the coordinates of the looked-up rows). Those are the
    coordinates and units a supernet's sub-architecture masks; plain Adam would still move them by their stale
    momentum and decay their second moment, so the next sub-architecture that uses them would find them moved
    and over-stepped (:class:`~ihas_lightning.modules.SupernetModule`'s ``freeze_masked``).
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
        frozen = self._frozen_dense_elements()
        for p, _ in sparse:          # Adam's own step skips parameters without a gradient
            p.grad = None
        try:
            super().step()
        finally:
            for (p, _), grad in zip(sparse, grads):
                p.grad = grad
        for param, zero, saved in frozen:
            for tensor, value in zip((param, self.state[param]["exp_avg"], self.state[param]["exp_avg_sq"]), saved):
                tensor[zero] = value
        batches: dict[tuple, tuple[dict[str, Any], list[Tensor]]] = {}
        for p, group in sparse:      # one fused update per param group, dtype, device and row width
            batches.setdefault((id(group), p.dtype, p.device, p.shape[1:]), (group, []))[1].append(p)
        for group, params in batches.values():
            self._rowwise_step(params, group)
        return loss

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Adam's, except that a param group saved without ``freeze_zero_grad`` (a checkpoint from before the
        option) keeps the value this optimiser was configured with instead of losing the key: a resumed run
        does what its module's hyperparameters say. A saved value wins."""
        configured = [group.get("freeze_zero_grad") for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, value in zip(self.param_groups, configured):
            if value is not None:
                group.setdefault("freeze_zero_grad", value)

    def _frozen_dense_elements(self) -> list[tuple[Tensor, Tensor, list[Tensor]]]:
        """For ``freeze_zero_grad`` groups: each dense parameter's zero-gradient elements and their value and
        moments before the step (moments not yet created are 0), to be written back after it."""
        frozen = []
        for group in self.param_groups:
            if not group.get("freeze_zero_grad"):
                continue
            for p in group["params"]:
                if p.grad is None or p.grad.is_sparse:
                    continue
                zero = p.grad == 0
                if zero.any():
                    state = self.state.get(p, {})
                    frozen.append((p, zero, [p[zero]] + [state[k][zero] if k in state else p.new_zeros(())
                                                         for k in ("exp_avg", "exp_avg_sq")]))
        return frozen

    def _rowwise_step(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """Lazy Adam on the rows the sparse gradients of ``params`` (same group, dtype, device, row width) hold.

        The tables' rows are handled as one: their ids, offset per table, are sorted once and duplicates summed
        by one ``embedding_bag`` over the sorted order (on the CPU about half the time of ``unique`` plus
        ``index_add_``, whose scatter is row by row; a ``coalesce`` per table costs more still), and the moment
        arithmetic runs once over all of them; only the reads and writes of each table's rows and moments are
        per table.
        """
        if group["amsgrad"] or group["maximize"]:
            raise ValueError("RowwiseAdam: amsgrad and maximize are not supported for sparse gradients; use "
                             "embedding_updates='dense'")
        beta1, beta2 = group["betas"]
        keys, values, offsets, states, offset = [], [], [], [], 0
        for param in params:
            keys.append(param.grad._indices()[0] + offset)           # coalesced or not: duplicates summed below
            values.append(param.grad._values())
            offsets.append(offset)
            offset += param.shape[0]
            state = self.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                state["exp_avg"] = _lazy_zeros_like(param)
                state["exp_avg_sq"] = _lazy_zeros_like(param)
            state["step"] += 1
            states.append(state)
        ordered, order = torch.sort(torch.cat(keys), stable=True)
        if not len(ordered):         # e.g. only padding ids looked up: nothing to update
            return
        rows, counts = torch.unique_consecutive(ordered, return_counts=True)                  # (n,) sorted
        flat = torch.cat(values).reshape(len(ordered), -1)                                    # (N, d)
        summed = F.embedding_bag(order, flat, counts.cumsum(0) - counts, mode="sum")          # (n, d)
        summed = summed.view(len(rows), *params[0].shape[1:])
        bounds = torch.searchsorted(rows, torch.as_tensor(offsets[1:] + [offset], device=rows.device)).tolist()
        spans = list(zip([0, *bounds[:-1]], bounds))
        local = [rows[a:b] - o for (a, b), o in zip(spans, offsets)]
        # Bias corrections per table (tables may have taken different numbers of steps), repeated per row.
        steps = torch.stack([state["step"] for state in states]).double()   # in float64, as Adam's floats
        bias1 = (1 - torch.pow(torch.as_tensor(beta1, dtype=steps.dtype, device=steps.device), steps)).float()
        bias2 = (1 - torch.pow(torch.as_tensor(beta2, dtype=steps.dtype, device=steps.device), steps)).float()
        counts = torch.as_tensor([b - a for a, b in spans], device=steps.device)
        shape = (-1,) + (1,) * (summed.dim() - 1)
        bias1, bias2 = bias1.repeat_interleave(counts).view(shape), bias2.repeat_interleave(counts).view(shape)
        moving = summed != 0 if group.get("freeze_zero_grad") else None      # before the decay is added
        if group["weight_decay"]:
            weights = torch.cat([p.index_select(0, r) for p, r in zip(params, local)])
            summed = summed.add_(weights, alpha=group["weight_decay"])
        m = torch.cat([s["exp_avg"].index_select(0, r) for s, r in zip(states, local)])
        v = torch.cat([s["exp_avg_sq"].index_select(0, r) for s, r in zip(states, local)])
        before = (m.clone(), v.clone()) if moving is not None else None
        m.lerp_(summed, 1 - beta1)
        v.mul_(beta2).addcmul_(summed, summed, value=1 - beta2)
        update = m / ((v.sqrt() / bias2.sqrt()).add_(group["eps"])) * (-group["lr"] / bias1)
        if before is not None:
            m, v, update = torch.where(moving, m, before[0]), torch.where(moving, v, before[1]), update * moving
        for param, state, r, (a, b) in zip(params, states, local, spans):
            state["exp_avg"].index_copy_(0, r, m[a:b])
            state["exp_avg_sq"].index_copy_(0, r, v[a:b])
            param.index_add_(0, r, update[a:b])


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

