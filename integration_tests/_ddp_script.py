"""One DDP fit (2 CPU processes, gloo) for ``test_ddp_cpu.py``; Lightning re-runs this script for rank 1.

Usage: python _ddp_script.py STAGE OUT CACHE [RESUME_CKPT]
The training split's dense column I4 is replaced by the row index, so each rank can report which samples it
saw; an audit callback all-gathers what every rank applies at each step and fails on any difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny import STAGES, model_state, tiny_dm  # noqa: E402

from ihas_lightning.data.datamodule import CTRDataModule  # noqa: E402
from ihas_lightning.data.encoders import EncodedColumns  # noqa: E402


class Audit(Callback):
    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.checks = 0
        self.ids: dict[int, list[int]] = {}

    def _applied(self, pl_module: pl.LightningModule) -> torch.Tensor:
        if self.stage == "supernet":
            sub = pl_module.supernet_masks.active
            return torch.tensor([*sub.dims, *sub.widths], dtype=torch.float64)
        gates = sum(p.double().sum() for p in pl_module.gates.parameters())
        return torch.stack([pl_module.gates.temperature.double(), torch.tensor(float(pl_module.regularizer_scale),
                            dtype=torch.float64), gates.detach(), torch.tensor(float(pl_module.gates_active),
                            dtype=torch.float64)])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.stage == "search":
            return  # the schedules apply their values in this hook; checked once they have (below)
        self._check(trainer, pl_module)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self.stage == "search":
            self._check(trainer, pl_module)

    def _check(self, trainer, pl_module) -> None:
        applied = self._applied(pl_module)
        gathered = pl_module.all_gather(applied)                                    # (world, n)
        if not torch.equal(gathered[0], gathered[1]):
            raise AssertionError(f"step {trainer.global_step}: ranks applied different architectures/values "
                                 f"{gathered.tolist()}")
        self.checks += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = batch["dense"][:, 3].long().tolist()
        self.ids.setdefault(trainer.current_epoch, []).extend(ids)


def main() -> None:
    torch.set_num_threads(1)
    stage, out, cache = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    resume = sys.argv[4] if len(sys.argv) > 4 else None
    pl.seed_everything(0)
    base = tiny_dm(cache)
    train = base.split("train")
    dense = train.dense.copy()
    dense[:, 3] = np.arange(len(train), dtype=np.float32)                           # the row index
    splits = {"train": EncodedColumns(train.labels, train.sparse, dense, train.multi),
              "val": base.split("val"), "test": base.split("test")}
    dm = CTRDataModule.from_encoded(splits, base.encoder, batch_size=base.batch_size, eval_batch_size=100)
    module, callbacks = STAGES[stage](dm)
    audit = Audit(stage)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", filename="{step}", every_n_train_steps=4,
                                 save_top_k=-1)
    # the search's gate network takes no part in the loss during its warm-up epoch: DDP must be told
    strategy = "ddp_find_unused_parameters_true" if stage == "search" else "ddp"
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, logger=False,
                         callbacks=[*callbacks, audit, checkpoint], enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, deterministic=True)
    trainer.fit(module, dm, ckpt_path=resume)
    rank = trainer.global_rank
    report = {"rank": rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
              "checks": audit.checks, "ids": audit.ids,
              "callback_states": {c.state_key: c.state_dict() for c in callbacks},
              "val_auc": float(trainer.callback_metrics["val_auc"]),
              "ddp_ignored": sorted(getattr(module, "_ddp_params_and_buffers_to_ignore", []))}
    (out / f"rank{rank}.json").write_text(json.dumps(report, default=str))
    torch.save(model_state(module), out / f"state_rank{rank}.pt")


if __name__ == "__main__":
    main()
