"""Row-wise (sparse) embedding updates: RowwiseAdam, the per-batch-rows L2, clipping, and the modules' switch."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ihas_lightning.backbones import build_backbone
from ihas_lightning.data.schema import Schema
from ihas_lightning.modules import BackboneModule, BackboneConfig
from ihas_lightning.modules.rowwise import RowwiseAdam, clip_gradients

SCHEMA = Schema(label="label", sparse=("a", "b"), dense=("x",))
VOCAB = {"a": 50, "b": 30}


def _tables(seed: int = 0) -> tuple[nn.Embedding, nn.Embedding]:
    torch.manual_seed(seed)
    sparse = nn.Embedding(20, 4, sparse=True)
    dense = nn.Embedding(20, 4)
    dense.weight.data.copy_(sparse.weight.data)
    return sparse, dense


def _step(table: nn.Embedding, optimizer: torch.optim.Optimizer, ids: list[int]) -> None:
    optimizer.zero_grad()
    out = table(torch.tensor(ids))
    (out * torch.arange(1.0, 5.0)).square().sum().backward()
    optimizer.step()


def test_rowwise_adam_matches_adam_on_rows_touched_every_step_and_leaves_the_others() -> None:
    sparse, dense = _tables()
    rowwise, adam = RowwiseAdam(sparse.parameters(), lr=0.1), torch.optim.Adam(dense.parameters(), lr=0.1)
    for _ in range(3):                       # rows 1, 2 (2 twice: duplicates are summed) at every step
        _step(sparse, rowwise, [1, 2, 2])
        _step(dense, adam, [1, 2, 2])
    torch.testing.assert_close(sparse.weight[[1, 2]], dense.weight[[1, 2]], rtol=1e-6, atol=1e-7)
    assert torch.equal(sparse.weight[3:], dense.weight[3:])               # never touched: both unchanged
    before = sparse.weight.detach().clone()
    moments = rowwise.state[sparse.weight]["exp_avg"].clone()
    _step(sparse, rowwise, [5])
    _step(dense, adam, [5])
    assert torch.equal(sparse.weight[[1, 2]], before[[1, 2]])             # not in this batch: kept as is
    assert torch.equal(rowwise.state[sparse.weight]["exp_avg"][[1, 2]], moments[[1, 2]])
    assert not torch.equal(dense.weight[[1, 2]], before[[1, 2]])          # dense Adam moves them by momentum
    assert not torch.equal(sparse.weight[5], before[5])


def test_tables_updated_together_match_sparse_adam_table_by_table() -> None:
    """The fused step over several tables (different widths, sizes and step counts: one table skips a step)
    equals ``torch.optim.SparseAdam`` run on each table alone, on every row."""
    torch.manual_seed(4)
    shapes = [(20, 4), (7, 4), (20, 1), (9, 4)]
    ours_tables = [nn.Embedding(v, d, sparse=True) for v, d in shapes]
    twins = copy.deepcopy(ours_tables)
    ours = RowwiseAdam([t.weight for t in ours_tables], lr=0.05)
    alone = [torch.optim.SparseAdam([t.weight], lr=0.05, eps=1e-8) for t in twins]
    for step in range(5):
        for tables, optimizers in ((ours_tables, [ours]), (twins, alone)):
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss = 0.0
            for index, (table, (vocab, _)) in enumerate(zip(tables, shapes)):
                if index == 1 and step == 2:                 # this table gets no gradient at step 2
                    continue
                seeded = torch.Generator().manual_seed(10 * step + index)
                ids = torch.randint(0, vocab, (12,), generator=seeded)                   # duplicates included
                loss = loss + (table(ids) * torch.randn(12, table.embedding_dim, generator=seeded)).sum()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
    for table, twin in zip(ours_tables, twins):
        torch.testing.assert_close(table.weight, twin.weight, rtol=1e-5, atol=1e-6)
    assert float(ours.state[ours_tables[1].weight]["step"]) == 4.0                       # skipped once
    assert float(ours.state[ours_tables[0].weight]["step"]) == 5.0


def test_a_step_whose_sparse_gradients_hold_no_rows_changes_no_row() -> None:
    """Only padding ids looked up (a multi-valued field's empty batch): the gradient has no rows."""
    table = nn.Embedding(10, 4, sparse=True, padding_idx=0)
    before = table.weight.detach().clone()
    optimizer = RowwiseAdam(table.parameters(), lr=0.1, weight_decay=0.1)
    table(torch.tensor([0, 0])).sum().backward()
    assert table.weight.grad._nnz() == 0
    optimizer.step()
    assert torch.equal(table.weight, before)


def test_dense_parameters_take_fused_adams_exact_step() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(5, 3)
    twin = copy.deepcopy(layer)
    ours, adam = RowwiseAdam(layer.parameters(), lr=0.01, fused=True), torch.optim.Adam(twin.parameters(), lr=0.01,
                                                                                        fused=True)
    x = torch.randn(8, 5)
    for _ in range(4):
        for module, optimizer in ((layer, ours), (twin, adam)):
            optimizer.zero_grad()
            module(x).square().sum().backward()
            optimizer.step()
    assert torch.equal(layer.weight, twin.weight) and torch.equal(layer.bias, twin.bias)
    assert ours.state_dict()["state"].keys() == adam.state_dict()["state"].keys()


def test_state_dict_resumes_exactly() -> None:
    sparse, _ = _tables(2)
    optimizer = RowwiseAdam(sparse.parameters(), lr=0.05)
    _step(sparse, optimizer, [0, 3])
    saved_weight, saved_state = sparse.weight.detach().clone(), copy.deepcopy(optimizer.state_dict())
    _step(sparse, optimizer, [3, 4])
    uninterrupted = sparse.weight.detach().clone()
    resumed = nn.Embedding(20, 4, sparse=True)
    resumed.weight.data.copy_(saved_weight)
    again = RowwiseAdam(resumed.parameters(), lr=0.05)
    again.load_state_dict(saved_state)
    _step(resumed, again, [3, 4])
    assert torch.equal(resumed.weight, uninterrupted)
    assert float(again.state[resumed.weight]["step"]) == 2.0


def test_unsupported_options_raise_value_error_on_sparse_gradients() -> None:
    sparse, _ = _tables()
    with pytest.raises(ValueError, match="amsgrad"):
        _step(sparse, RowwiseAdam(sparse.parameters(), amsgrad=True), [1])


def test_weight_decay_is_adams_coupled_l2_on_the_rows_of_the_step_only() -> None:
    """On rows touched at every step (2 twice: its L2 counts once) the row-wise weight decay equals
    ``torch.optim.Adam(weight_decay=...)``; a row outside the batch is not shrunk."""
    sparse, dense = _tables(5)
    rowwise = RowwiseAdam(sparse.parameters(), lr=0.01, weight_decay=0.5)
    adam = torch.optim.Adam(dense.parameters(), lr=0.01, weight_decay=0.5)
    plain = copy.deepcopy(sparse)
    undecayed = RowwiseAdam(plain.parameters(), lr=0.01)
    for _ in range(4):
        for table, optimizer in ((sparse, rowwise), (dense, adam), (plain, undecayed)):
            optimizer.zero_grad()
            (table(torch.tensor([1, 2, 2])) * torch.tensor([0.3, -0.2, 0.1, 0.05])).sum().backward()  # w-free
            optimizer.step()
    torch.testing.assert_close(sparse.weight[[1, 2]], dense.weight[[1, 2]], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(sparse.weight[[1, 2]], plain.weight[[1, 2]], atol=1e-4)       # the decay acts
    assert torch.equal(sparse.weight[3:], plain.weight[3:])                                 # only on those rows


def test_clipping_matches_clip_grad_norm_on_the_summed_rows() -> None:
    sparse, dense = _tables(3)
    for table in (sparse, dense):
        (table(torch.tensor([1, 1, 7])) * 10).sum().backward()
    clip_gradients([sparse.weight], 0.5, "norm")
    torch.nn.utils.clip_grad_norm_([dense.weight], 0.5)
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
    assert torch.linalg.vector_norm(sparse.weight.grad.to_dense()) == pytest.approx(0.5, rel=1e-4)
    clip_gradients([sparse.weight], 0.01, "value")
    assert sparse.weight.grad.to_dense().abs().max() == pytest.approx(0.01)


def _batch(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {"sparse": torch.as_tensor(np.stack([rng.integers(0, 10, n), rng.integers(0, 30, n)], 1)),
            "dense": torch.as_tensor(rng.normal(size=(n, 1)), dtype=torch.float32),
            "multi": torch.zeros((n, 0), dtype=torch.long),
            "label": torch.as_tensor(rng.integers(0, 2, n), dtype=torch.float32)}


def _reference_l2(backbone, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The whole-table L2 restricted to the batch's rows, each once: what the optimiser's row-wise decay
    must equal (written out independently of it)."""
    total = torch.zeros(())
    for table_dict in (backbone.model.embedding_dict, backbone.model.linear_model.embedding_dict):
        for index, field in enumerate(SCHEMA.sparse):
            weight = table_dict[field].weight
            rows = F.embedding(batch["sparse"][:, index].unique(), weight, sparse=True)  # keeps the step lazy
            total = total + backbone.row_l2()[weight] * rows.square().sum()
    return total


def test_row_l2_in_the_optimizer_equals_the_whole_table_term_on_the_batch_rows() -> None:
    """Trained by Lightning (batches of 16, 16 and 10 rows: B changes), the tables equal a twin whose loss
    holds the L2 of the batch's rows explicitly (each row once, divided by B) and whose optimiser has no
    decay; no row outside the batches moves."""
    l2 = 0.5                           # large, so that a wrong scale would show
    config = BackboneConfig("DeepFM", dim=4, dnn_hidden_units=(8,), seed=0, l2_reg_embedding=l2)
    module = BackboneModule(SCHEMA, VOCAB, config=config)
    twin = copy.deepcopy(module.backbone)
    assert module.backbone.row_l2()[module.backbone.model.embedding_dict["a"].weight] == l2
    batches = [_batch(16, 1), _batch(16, 2), _batch(10, 3)]
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    references = {}
    for decayed in (True, False):
        reference = references[decayed] = copy.deepcopy(twin).train()
        optimizer = RowwiseAdam(reference.parameters(), lr=module.hparams.lr)
        for batch in batches:
            optimizer.zero_grad()
            logits = reference(batch)
            extra = reference.regularization_loss() + (_reference_l2(reference, batch) if decayed else 0.0)
            (F.binary_cross_entropy_with_logits(logits, batch["label"]) + extra / len(logits)).backward()
            optimizer.step()
    ours = dict(module.backbone.named_parameters())
    for name, weight in references[True].named_parameters():
        torch.testing.assert_close(ours[name], weight, rtol=1e-5, atol=1e-6)
    table = ours["model.embedding_dict.a.weight"]
    assert not torch.allclose(table, dict(references[False].named_parameters())["model.embedding_dict.a.weight"],
                              rtol=1e-5, atol=1e-6)                                   # the L2 did act
    touched = torch.zeros(VOCAB["a"], dtype=torch.bool)
    touched[torch.cat([b["sparse"][:, 0] for b in batches])] = True
    assert torch.equal(table[~touched], twin.model.embedding_dict["a"].weight[~touched])


def test_an_optimizer_without_row_l2_groups_is_warned_about() -> None:
    config = BackboneConfig("DeepFM", dim=4, dnn_hidden_units=(8,), seed=0)
    module = BackboneModule(SCHEMA, VOCAB, config=config)
    with pytest.warns(UserWarning, match="get no L2"):
        module.on_before_optimizer_step(torch.optim.Adam(module.parameters()))
    ours = BackboneModule(SCHEMA, VOCAB, config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.on_before_optimizer_step(ours.configure_optimizers())      # its row_l2 groups: no warning


@pytest.mark.parametrize("updates", ["rowwise", "dense"])
def test_module_training_step_touches_only_the_batch_rows(updates: str) -> None:
    config = BackboneConfig("DeepFM", dim=4, dnn_hidden_units=(8,), seed=0, embedding_updates=updates)
    module = BackboneModule(SCHEMA, VOCAB, config=config)
    assert module.backbone.sparse_tables == (updates == "rowwise")
    assert module.hparams.embedding_updates == updates
    optimizer = module.configure_optimizers()
    table = module.backbone.model.embedding_dict["b"].weight
    before = table.detach().clone()
    pl.seed_everything(0)
    batch = _batch()
    for _ in range(2):
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()
    touched = torch.zeros(VOCAB["b"], dtype=torch.bool)
    touched[batch["sparse"][:, 1]] = True
    changed = (table != before).any(1)
    assert torch.equal(changed[touched], torch.ones(int(touched.sum()), dtype=torch.bool))
    assert bool(changed[~touched].any()) == (updates == "dense")


def test_embedding_updates_is_checked() -> None:
    with pytest.raises(ValueError, match="embedding_updates"):
        BackboneConfig(embedding_updates="lazy")
    with pytest.raises(ValueError, match="embedding_updates"):
        build_backbone("DeepFM", SCHEMA, VOCAB, dim=4, embedding_updates="sparse")
