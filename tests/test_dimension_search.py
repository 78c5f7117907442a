"""DimensionSearch: the iHAS search added to a user's own DeepCTR-Torch LightningModule by one callback."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from ihas_lightning.backbones import import_deepctr
from ihas_lightning.callbacks import DimensionSearch
from ihas_lightning.callbacks.deepctr_model import batch_from_deepctr_input, schema_from_columns
from ihas_lightning.clustering import ClusterConfig, cluster
from ihas_lightning.modules import SearchModule
from ihas_lightning.pipeline.search import searched_masks

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "deepctr_user_module.py"
dc = import_deepctr()


def _example():
    spec = importlib.util.spec_from_file_location("example_deepctr_user_module", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class TinyModule(pl.LightningModule):
    """A user's module: a DeepFM on 3 sparse fields (vocabulary 10) and 1 dense field."""

    def __init__(self, dims: tuple[int, int, int] = (4, 4, 4), manual: bool = False) -> None:
        super().__init__()
        columns = [dc.inputs.SparseFeat(f"s{i}", 10, embedding_dim=d) for i, d in enumerate(dims)]
        columns.append(dc.inputs.DenseFeat("x", 1))
        self.model = dc.models.DeepFM(columns, columns, dnn_hidden_units=(8,), task="binary", seed=0, device="cpu")
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy(self.model(x).squeeze(-1), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.binary_cross_entropy(self.model(x).squeeze(-1), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _tiny_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (256, 3), generator=generator).float()
    x = torch.cat([ids, torch.rand(256, 1, generator=generator)], dim=1)                        # (N, 4)
    y = ((ids[:, 0] + ids[:, 1]) % 2).float()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)


def _fit(module: pl.LightningModule, search: DimensionSearch, epochs: int, tmp_path: Path,
         ckpt_path: str | None = None) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[search, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
                         logger=False, enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    trainer.fit(module, _tiny_loader(), _tiny_loader(), ckpt_path=ckpt_path)
    return trainer


def test_resume_continues_the_search_exactly(tmp_path: Path) -> None:
    settings = {"budget": 0.5, "warmup_epochs": 0, "anneal_steps": 12, "regularizer_steps": 4}
    pl.seed_everything(0)
    whole, whole_search = TinyModule(), DimensionSearch(**settings)
    _fit(whole, whole_search, 2, tmp_path / "whole")
    pl.seed_everything(0)
    _fit(TinyModule(), DimensionSearch(**settings), 1, tmp_path / "first")
    pl.seed_everything(0)
    resumed, resumed_search = TinyModule(), DimensionSearch(**settings)
    _fit(resumed, resumed_search, 2, tmp_path / "second", ckpt_path=str(tmp_path / "first" / "last.ckpt"))

    assert resumed_search.step == whole_search.step == 16
    assert whole_search.gates.temperature.item() == pytest.approx(0.1)                    # annealed to the end
    for key, value in whole_search.gates.state_dict().items():
        torch.testing.assert_close(resumed_search.gates.state_dict()[key], value, msg=key)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)
    # The user's module is left as it was: no patched attributes, no gate weights in its state_dict.
    assert "training_step" not in resumed.__dict__ and "input_from_feature_columns" not in resumed.model.__dict__
    assert not any("gate" in key for key in resumed.state_dict())


def test_the_gates_train_and_their_regularizer_enters_the_loss(tmp_path: Path) -> None:
    pl.seed_everything(0)
    search = DimensionSearch(budget=0.5, warmup_epochs=0)
    fresh = DimensionSearch(budget=0.5, warmup_epochs=0)
    fresh.setup(pl.Trainer(logger=False), TinyModule(), "validate")                         # seeded gates
    before = {k: v.clone() for k, v in fresh.gates.state_dict().items()}
    _fit(TinyModule(), search, 1, tmp_path)
    after = search.gates.state_dict()
    assert not torch.equal(after["out.weight"].cpu(), before["out.weight"])                # a param group of Adam
    assert search.gates.controller.multiplier != 0.0                                       # the dual ascent ran
    assert search.last_val_summary is not None and search.last_val_summary["distinct_masks"] >= 1


def test_refuses_what_it_cannot_search() -> None:
    with pytest.raises(ValueError, match="budget"):
        DimensionSearch(budget=1.5)
    with pytest.raises(ValueError, match="gate_lr"):
        DimensionSearch(gate_lr=0.0)
    trainer = pl.Trainer(logger=False)
    with pytest.raises(ValueError, match="one embedding_dim"):
        DimensionSearch().setup(trainer, TinyModule(dims=(4, 4, 8)), "fit")
    with pytest.raises(ValueError, match="manual optimization"):
        DimensionSearch().setup(trainer, TinyModule(manual=True), "fit")
    two = TinyModule()
    two.other = TinyModule().model
    with pytest.raises(ValueError, match="exactly one"):
        DimensionSearch().setup(trainer, two, "fit")
    DimensionSearch(model="model").setup(trainer, two, "validate")                         # named: accepted


def test_user_module_searched_to_budget_keeps_auc_and_exports(data_dir: Path, tmp_path: Path) -> None:
    example = _example()
    columns, train_loader, val_loader = example.loaders(20_000, embedding_dim=8, batch_size=128)
    plain, plain_auc = example.train(columns, train_loader, val_loader, epochs=4, seed=0)
    search = DimensionSearch(budget=0.5)
    searched, search_auc = example.train(columns, train_loader, val_loader, epochs=4, seed=0, search=search)

    assert type(plain) is type(searched) is example.DeepFMClickModule
    summary = search.last_val_summary
    assert abs(summary["expected_param_share"] - 0.5) <= 0.1, summary["expected_param_share"]
    assert abs(search_auc - plain_auc) <= 0.005, (search_auc, plain_auc)

    path = search.export_search_checkpoint(tmp_path / "searched.ckpt")
    module = SearchModule.load_from_checkpoint(str(path), map_location="cpu").eval()
    assert module.hparams.gate["budget"] == 0.5 and module.hparams.dim == 8
    schema, vocab = schema_from_columns(columns)
    assert module.schema == schema and dict(module.hparams.vocab_sizes) == vocab
    x, labels = val_loader.dataset.tensors
    batch = batch_from_deepctr_input(x, searched.model.feature_index, schema, labels)
    masks = searched_masks(module, batch)                                                  # (N, F, D)
    torch.testing.assert_close(masks, search.masks(x))                                     # the same gates
    with torch.no_grad():                                                                  # the same weights
        ungated = torch.logit(searched.model(x).squeeze(-1).double(), eps=1e-12)
        module.backbone.embedding_transform = None
        torch.testing.assert_close(module(batch).double(), ungated, atol=1e-4, rtol=1e-4)
    result = cluster(lambda: iter([masks.flatten(1)]), lambda: iter([masks]), len(schema.embedded_fields), 8,
                     ClusterConfig(k=4, min_dim=2, seed=0))
    assert result.k == 4 and result.dims.shape == (4, len(schema.embedded_fields))
    assert int(result.group_sizes.sum()) == len(x)
