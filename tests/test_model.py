"""The shipped ``IHASModel``: save/load round trip, predictions on raw rows, and refusing other files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ihas_lightning.data.synthetic import SyntheticCTR
from ihas_lightning.model import IHASModel

from _retrain_fixtures import GROUP_DIMS, routed_module, sample_batch


@torch.no_grad()
def test_ihas_model_round_trip(retrain_dm, tmp_path: Path) -> None:
    module = routed_module(retrain_dm)
    model = IHASModel(module, retrain_dm.encoder, group_share=[0.5, 0.3, 0.2])
    path = tmp_path / "ihas.pt"
    model.save(path)
    loaded = IHASModel.load(path)
    loaded.eval()
    batch = sample_batch(retrain_dm, "test")
    torch.testing.assert_close(loaded(batch), model(batch), rtol=0, atol=0)
    assert torch.equal(loaded.predict_groups(batch), model.predict_groups(batch))
    assert loaded.predict_groups(batch).unique().numel() == 3
    assert loaded.embedding_params == model.embedding_params == 15166
    assert loaded.flops_per_sample == model.flops_per_sample > 0
    assert loaded.group_share == [0.5, 0.3, 0.2]
    # map_location places the module (it was built on the CPU whatever the file's tensors were on: seen on a GPU)
    on_meta = IHASModel.load(path, map_location="meta")
    assert {t.device.type for t in (*on_meta.parameters(), *on_meta.buffers())} == {"meta"}
    assert torch.equal(loaded.module.group_dims, torch.tensor(GROUP_DIMS))
    assert loaded.module.table_widths == module.table_widths

    # Raw rows from the generator, encoded by the saved encoders: the test split's own rows (same data seed
    # as the cache's test split) predict exactly as the cached batch; unseen rows predict identically.
    raw = SyntheticCTR(seed=0).raw(len(retrain_dm.split("test")), seed=3)
    predicted = loaded.predict_raw(raw, batch_size=64)
    assert predicted.shape == (len(raw),) and predicted.dtype == np.float32
    np.testing.assert_allclose(predicted[:200], torch.sigmoid(model(batch)).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(predicted, model.predict_raw(raw), rtol=0, atol=0)
    other = SyntheticCTR(seed=0).raw(300, seed=99)
    np.testing.assert_allclose(loaded.predict_raw(other), model.predict_raw(other), rtol=0, atol=0)
    assert predicted.std() > 1e-3


def test_ihas_model_refuses_other_files(retrain_dm, tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "hparams": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="is not an IHASModel file"):
        IHASModel.load(tmp_path / "checkpoint.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="is not an IHASModel file"):
        IHASModel.load(tmp_path / "tensor.pt")
    (tmp_path / "text.pt").write_text("not a model")
    with pytest.raises(ValueError, match="is not an IHASModel file .not a torch file"):
        IHASModel.load(tmp_path / "text.pt")
    with pytest.raises(ValueError, match="group_share has 2 entries for 3 groups"):
        IHASModel(routed_module(retrain_dm), group_share=[0.5, 0.5])
    with pytest.raises(RuntimeError, match="saved without encoders"):
        IHASModel(routed_module(retrain_dm)).predict_raw(SyntheticCTR(seed=0).raw(5))
