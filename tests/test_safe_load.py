"""Loading a model file or checkpoint never runs code from it, and what we save loads under ``weights_only``.

The crafted files carry a ``__reduce__`` payload that creates a folder in ``tmp_path``: the tests assert the
folder does not exist after the load was refused (and, as the control, that plain unpickling does create it).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.data.synthetic import SyntheticCTR
from ihas_lightning.model import IHASModel
from ihas_lightning.modules import BackboneModule, RetrainModule, SearchModule, SupernetModule
from ihas_lightning.run_config import TrainerConfig
from ihas_lightning.safe_load import load_checkpoint_state, load_torch_file
from ihas_lightning.training import make_trainer

from _retrain_fixtures import routed_module


class _Payload:
    """Unpickling this calls ``os.mkdir(target)``: the stand-in for a command a crafted file would run."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return os.mkdir, (self.target,)


def _crafted(tmp_path: Path, name: str, content: dict) -> Path:
    path = tmp_path / name
    torch.save(content, path)
    return path


def test_the_payload_runs_when_unpickled_the_unsafe_way(tmp_path: Path) -> None:
    """The control: the payload is real, so the tests below would see it run."""
    target = tmp_path / "ran"
    path = _crafted(tmp_path, "evil.pt", {"x": _Payload(target)})
    torch.load(path, weights_only=False)
    assert target.is_dir()


def test_ihas_model_load_refuses_a_crafted_file_without_running_it(tmp_path: Path) -> None:
    target = tmp_path / "ran"
    path = _crafted(tmp_path, "ihas_model.pt", {"format": "ihas-model/1", "hparams": _Payload(target),
                                                "state_dict": {}, "encoder": None, "group_share": [1.0]})
    with pytest.raises(ValueError, match=r"ihas_model.pt' is not an IHASModel file \(it holds objects other "
                                         r"than tensors and plain values, refused without loading them: .*mkdir"):
        IHASModel.load(path)
    assert not target.exists()
    pickled = tmp_path / "plain.pkl"                            # a bare pickle, not a torch zip file
    pickled.write_bytes(pickle.dumps({"format": "ihas-model/1", "x": _Payload(target)}, protocol=2))
    with pytest.raises(ValueError, match=r"plain.pkl' is not an IHASModel file \(it holds objects other"):
        IHASModel.load(pickled)
    assert not target.exists()
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.pt' is not an IHASModel file \(not a torch file: empty"):
        IHASModel.load(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError):
        IHASModel.load(tmp_path / "missing.pt")


def test_init_from_and_warm_start_loads_refuse_a_crafted_checkpoint_without_running_it(tmp_path: Path) -> None:
    from ihas_lightning.data.schema import Schema

    schema, vocab = Schema(label="y", sparse=("a", "b")), {"a": 5, "b": 5}
    target = tmp_path / "ran"
    path = _crafted(tmp_path, "supernet.ckpt", {"state_dict": {"backbone.x": _Payload(target)}, "epoch": 3})
    search = SearchModule(schema, vocab, dim=4, dnn_hidden_units=(4,))
    before = {k: v.clone() for k, v in search.state_dict().items()}
    with pytest.raises(ValueError, match=r"supernet.ckpt' is not a checkpoint to initialize the backbone from "
                                         r"\(it holds objects other than tensors"):
        search.init_backbone_from(str(path))
    assert not target.exists()
    assert all(torch.equal(v, before[k]) for k, v in search.state_dict().items())
    # --retrain-init-from and the search checkpoint a retraining warm-starts from are read by this helper
    with pytest.raises(ValueError, match=r"supernet.ckpt' is not a checkpoint \(it holds objects other"):
        load_checkpoint_state(path)
    assert not target.exists()
    torch.save({"epoch": 1}, tmp_path / "no_state.ckpt")
    with pytest.raises(ValueError, match=r"no_state.ckpt' is not a checkpoint: it holds no 'state_dict' "
                                         r"\(found \['epoch'\]\)"):
        load_checkpoint_state(tmp_path / "no_state.ckpt")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes.txt' is not a torch file \(not a torch file: "):
        load_torch_file(tmp_path / "notes.txt")


def test_a_legacy_format_file_still_loads(tmp_path: Path) -> None:
    """Files in torch's pre-zip format cannot be memory-mapped; they load without the map."""
    torch.save({"state_dict": {"w": torch.arange(3.0)}}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint_state(tmp_path / "old.pt")["w"], torch.arange(3.0))


def test_our_model_file_loads_under_weights_only(retrain_dm: CTRDataModule, tmp_path: Path) -> None:
    dm = retrain_dm
    model = IHASModel(routed_module(dm), dm.encoder, group_share=[0.2, 0.3, 0.5])
    model.save(tmp_path / "ihas_model.pt")
    data = torch.load(tmp_path / "ihas_model.pt", weights_only=True)
    assert data["format"] == "ihas-model/1" and data["group_share"] == [0.2, 0.3, 0.5]
    loaded = IHASModel.load(tmp_path / "ihas_model.pt")
    raw = SyntheticCTR(seed=0).raw(50)
    assert (loaded.predict_raw(raw) == model.predict_raw(raw)).all()


@pytest.mark.parametrize("kind", ["backbone", "supernet", "search", "retrain"])
def test_our_lightning_checkpoints_load_resume_and_rebuild_under_weights_only(kind: str, retrain_dm: CTRDataModule,
                                                                             tmp_path: Path) -> None:
    """Lightning's own loading (``load_from_checkpoint``, ``fit(ckpt_path=...)``) with ``weights_only=True``:
    hyperparameters, the encoder and every callback's state are plain values and tensors."""
    dm = retrain_dm
    common = {"dim": 8, "dnn_hidden_units": (16,), "seed": 3}
    build = {"backbone": lambda: BackboneModule(dm.schema, dm.vocab_sizes, **common),
             "supernet": lambda: SupernetModule(dm.schema, dm.vocab_sizes, **common),
             "search": lambda: SearchModule(dm.schema, dm.vocab_sizes, **common),
             "retrain": lambda: routed_module(dm)}[kind]
    cls = {"backbone": BackboneModule, "supernet": SupernetModule, "search": SearchModule,
           "retrain": RetrainModule}[kind]
    args = TrainerConfig(quiet=True, epochs=1, accelerator="cpu")
    pl.seed_everything(0)
    module = build()
    make_trainer(args, tmp_path / "run", max_epochs=1).fit(module, dm)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["ihas_encoder"] == dm.encoder.to_dict()
    rebuilt = cls.load_from_checkpoint(last, weights_only=True)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in rebuilt.state_dict().items())
    assert rebuilt.encoder.to_dict() == dm.encoder.to_dict()
    resumed = build()
    trainer = make_trainer(args, tmp_path / "run", max_epochs=2)
    trainer.fit(resumed, dm, ckpt_path=str(last), weights_only=True)
    assert trainer.current_epoch == 2 and trainer.global_step == 2 * checkpoint["global_step"]
