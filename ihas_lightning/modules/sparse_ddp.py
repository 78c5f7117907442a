"""Row-wise tables under DDP without torch's sparse all-reduce.

DDP all-reduces sparse gradients with gloo's sparse all-reduce, which here sometimes corrupts the heap and kills
a rank inside backward (a segfault or glibc's "malloc(): unaligned tcache chunk detected"; about 1 in 7 runs of
``integration_tests/test_ddp_cpu.py``). So the row-wise tables are kept out of DDP
(``_ddp_params_and_buffers_to_ignore``, read by ``DistributedDataParallel`` when it wraps the module) and their
gradients are averaged over the ranks here with dense collectives: every rank gathers the others' row ids and
rows, and the sum of all ranks' rows divided by the world size is what DDP's average would have given.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["all_reduce_sparse_gradients", "broadcast_from_rank0", "row_wise_tables"]


def row_wise_tables(module: nn.Module, tables: Iterable[nn.Embedding]) -> dict[str, nn.Parameter]:
    """``{name in module: weight}`` of the ``tables`` with sparse gradients (row-wise updates)."""
    ids = {id(table.weight) for table in tables if table.sparse}
    return {name: param for name, param in module.named_parameters() if id(param) in ids}


def broadcast_from_rank0(params: Iterable[Tensor]) -> None:
    """Give every rank rank 0's values, as DDP does for the parameters it wraps."""
    with torch.no_grad():
        for param in params:
            dist.broadcast(param.data, src=0)


def _gather(tensor: Tensor, world_size: int) -> list[Tensor]:
    """Every rank's ``tensor`` (first dimension may differ between ranks), by one padded ``all_gather``."""
    length = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(lengths).item())
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    out = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(out, padded)
    return [part[:int(n.item())] for part, n in zip(out, lengths)]


def all_reduce_sparse_gradients(params: Iterable[Tensor]) -> None:
    """Replace each parameter's sparse gradient by its mean over the ranks (DDP's average), still sparse and
    holding only rows some rank touched. Every rank must call this with the same parameters, in the same order;
    a parameter without a gradient on this rank takes part with no rows."""
    world_size = dist.get_world_size()
    for param in params:
        grad = param.grad
        if grad is not None and not grad.is_sparse:
            raise TypeError("all_reduce_sparse_gradients is for sparse gradients (row-wise tables); this one is "
                            "dense: DDP all-reduces those itself")
        rows, width = param.shape[0], param.shape[1:]
        if grad is None:
            ids, values = param.new_zeros(0, dtype=torch.long), param.new_zeros((0, *width))
        else:
            grad = grad.coalesce()
            ids, values = grad.indices()[0], grad.values()
        all_ids = torch.cat(_gather(ids, world_size))
        all_values = torch.cat(_gather(values, world_size))
        if grad is None and all_ids.numel() == 0:
            continue                                          # no rank touched it: it stays without a gradient
        param.grad = torch.sparse_coo_tensor(all_ids[None], all_values / world_size, (rows, *width)).coalesce()
