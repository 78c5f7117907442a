"""modules/sparse_ddp.py in one gloo process: the averaged gradient of one rank is its own, rows untouched stay
untouched, a parameter no rank touched keeps no gradient, and a dense gradient is refused. Two ranks:
integration_tests/test_ddp_cpu.py (identical replicas, resume parity)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ihas_lightning.modules.sparse_ddp import all_reduce_sparse_gradients, broadcast_from_rank0, row_wise_tables


@pytest.fixture()
def one_rank(tmp_path: Path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_row_wise_tables_are_the_sparse_ones() -> None:
    model = nn.ModuleDict({"a": nn.Embedding(5, 2, sparse=True), "b": nn.Embedding(5, 2), "c": nn.Linear(2, 1)})
    assert list(row_wise_tables(model, [model["a"], model["b"]])) == ["a.weight"]


def test_all_reduce_sparse_gradients_on_one_rank(one_rank) -> None:
    torch.manual_seed(0)
    touched, untouched = nn.Embedding(6, 3, sparse=True), nn.Embedding(4, 3, sparse=True)
    ids = torch.tensor([1, 4, 1])
    (touched(ids) * torch.arange(3.0)[:, None]).sum().backward()
    before = touched.weight.grad.coalesce()
    all_reduce_sparse_gradients([touched.weight, untouched.weight])
    after = touched.weight.grad
    assert after.is_sparse and after.indices()[0].tolist() == [1, 4]           # only the batch's rows
    assert torch.equal(after.to_dense(), before.to_dense())                    # the mean over one rank
    assert after.to_dense()[1].tolist() == [2.0, 2.0, 2.0]                     # rows 0 and 2 of the batch summed
    assert untouched.weight.grad is None                                       # nobody touched it
    dense = nn.Embedding(3, 2)
    dense(torch.tensor([0])).sum().backward()
    with pytest.raises(TypeError, match="dense"):
        all_reduce_sparse_gradients([dense.weight])
    weight = touched.weight.detach().clone()
    broadcast_from_rank0([touched.weight])
    assert torch.equal(touched.weight, weight)
