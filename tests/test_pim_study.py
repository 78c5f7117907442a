"""The PIM co-design study: trials, workers on one storage, resume, failed trials, outputs, pruning callback."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from ihas_lightning.callbacks import OptunaPruning
import ihas_lightning.pim.study as pim_study
from ihas_lightning.cli import main
from ihas_lightning.pim.pareto import write_outputs
from ihas_lightning.pim.search_space import Candidate, allocate_budget, suggest
from ihas_lightning.pim.study import StudySettings, build_objective, candidate_of, quantized_tables, run_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained supernet: synthetic 3000 rows, dim 8, DNN 16-8, one epoch."""
    root = tmp_path_factory.mktemp("pim")
    torch.set_num_threads(1)
    code = main(["supernet", "--rows", "3000", "--dim", "8", "--dnn", "16,8", "--dim-choices", "2,4,8",
                 "--epochs", "1", "--batch-size", "256", "--out", str(root / "run"), "--quiet",
                 "--cache-dir", str(root / "cache")])
    assert code == 0
    return root / "run"


@pytest.fixture(scope="module")
def objective(run_dir):
    return build_objective(StudySettings(run_dir=str(run_dir)))


def _settings(run_dir: Path, storage: str, trials: int, **kw) -> StudySettings:
    return StudySettings(run_dir=str(run_dir), trials=trials, storage=storage, heartbeat_s=0, **kw)


def test_cli_runs_trials_and_writes_the_front(run_dir):
    assert main(["pim", "--run", str(run_dir), "--trials", "4", "--seed", "1", "--baseline-epochs", "0"]) == 0
    out = run_dir / "pim"
    assert (out / "study.db").exists() and (out / "pareto.png").stat().st_size > 1000
    report = json.loads((out / "pareto.json").read_text())
    assert report["trials"] == {"COMPLETE": 4}
    assert 1 <= len(report["points"]) <= 4
    for point in report["points"]:
        assert set(point) >= {"number", "auc", "latency_ratio", "energy_ratio", "flops_ratio", "dims", "widths",
                              "pim", "params"}
        assert set(point["dims"]) == {f"C{i}" for i in range(1, 9)} and len(point["widths"]) == 2
        pim_keys = {"device", "num_units", "table_placement", "precision", "partitioning", "batch_size"}
        assert pim_keys <= set(point["pim"])
        assert 0.0 <= point["auc"] <= 1.0 and point["flops_ratio"] > 0
    assert "| val AUC |" in (out / "pareto.md").read_text()
    assert report["baseline_trained_auc"] is None  # --baseline-epochs 0: none trained
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    study = optuna.load_study(study_name="pim", storage=f"sqlite:///{out / 'study.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert all(set(t.constraints) == {"capacity", "auc_drop"} for t in study.trials)


def test_missing_supernet_tells_the_user_what_to_run(tmp_path, capsys):
    assert main(["pim", "--run", str(tmp_path / "nothing"), "--trials", "1"]) == 2
    assert "ihas supernet --out" in capsys.readouterr().err


def test_baseline_against_itself_gives_ratios_of_one(objective):
    space = objective.space
    result = objective.evaluate(Candidate(space.full, space.baseline_config(256)))
    assert result["latency_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert result["energy_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert result["flops_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert result["feasible"] and result["auc"] == pytest.approx(objective.baseline_auc, abs=1e-12)


def test_resume_continues_numbering(run_dir, objective, tmp_path):
    storage = f"journal:{tmp_path / 'study.log'}"
    run_study(_settings(run_dir, storage, 3), objective)
    study = run_study(_settings(run_dir, storage, 3), objective)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # a fresh seed per continuation: the resumed half does not replay the first half's parameters
    first, second = ({tuple(sorted(t.params.items())) for t in study.trials[i:i + 3]} for i in (0, 3))
    assert first != second


def test_a_study_continues_only_with_the_settings_its_trials_were_scored_with(run_dir, objective, tmp_path, capsys):
    # Before: `ihas pim --mode budget` on a per-field study ran its trials and then died on Optuna's "The value of
    # the parameter 'emb_budget' is not found" (FixedTrial), and another --max-auc-drop mixed constraints silently.
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run_study(_settings(run_dir, storage, 2), objective)
    for other, named in (({"mode": "budget"}, r"search_space.mode: 'per_field' -> 'budget'"),
                         ({"max_auc_drop": 0.001}, r"max_auc_drop: None -> 0.001"),
                         ({"finetune_steps": 0, "refit_sweeps": 0}, r"finetune_steps: 10 -> 0; refit_sweeps: 5 -> 0")):
        settings = _settings(run_dir, storage, 2, **other)
        with pytest.raises(ValueError, match=f"study 'pim' was run with other settings \\({named}\\).*--study-name"):
            run_study(settings, build_objective(settings))
    study = run_study(_settings(run_dir, storage, 1), objective)       # the same settings continue it
    assert len(study.trials) == 3 and study.user_attrs["scoring"]["finetune_steps"] == 10
    fresh = _settings(run_dir, storage, 1, mode="budget", study_name="pim_budget")
    assert len(run_study(fresh, build_objective(fresh)).trials) == 1    # another study on the same storage
    # through the command: a clear error, exit code 2, no trial added
    assert main(["pim", "--run", str(run_dir), "--storage", storage, "--trials", "1", "--mode", "budget",
                 "--quiet"]) == 2
    assert "was run with other settings (search_space.mode" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="pim", storage=storage).trials) == 3
    # a trial of another search space does not rebuild in this one, and says why
    budget_trial = optuna.load_study(study_name="pim_budget", storage=storage).trials[0]
    with pytest.raises(ValueError, match="do not fit this search space .*per_field.*--study-name"):
        candidate_of(objective.space, budget_trial.params)


def test_raising_trial_is_failed_and_the_study_goes_on(run_dir, objective, tmp_path, monkeypatch):
    evaluate = objective.evaluate
    calls = []

    def flaky(candidate, batches=None):
        calls.append(candidate)
        if len(calls) == 2:
            raise RuntimeError("cost model exploded")
        return evaluate(candidate, batches)

    monkeypatch.setattr(objective, "evaluate", flaky)
    study = run_study(_settings(run_dir, f"sqlite:///{tmp_path / 's.db'}", 4), objective)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].user_attrs["error"] == "RuntimeError: cost model exploded"
    report = write_outputs(study, tmp_path / "out", objective.space, tensorboard=False)
    assert report["failed"] == [{"number": 1, "error": "RuntimeError: cost model exploded"}]


@pytest.mark.parametrize("cuda_used", [False, True])
def test_two_workers_share_one_storage(run_dir, tmp_path, monkeypatch, cuda_used):
    # After this process used CUDA the workers are spawned, not forked (a forked child's autograd fails there)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda_used)
    assert pim_study._start_method() == ("spawn" if cuda_used else "fork")
    storage = f"journal:{tmp_path / 'workers.log'}"
    study = run_study(_settings(run_dir, storage, 4, workers=2))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_candidates_round_trip_and_budget_allocation(objective):
    space = objective.space
    trial = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    candidate = suggest(trial, space)
    assert candidate_of(space, trial.params) == candidate
    full = sum(space.vocab_sizes) * space.dim
    floor = min(d for d in space.dim_choices if d > 0)
    assert allocate_budget(space, 0.01) == (floor,) * len(space.fields)  # below the floor: the floor
    previous = 0
    for share in (0.3, 0.5, 0.8, 1.0):
        dims = allocate_budget(space, share)
        used = sum(v * d for v, d in zip(space.vocab_sizes, dims))
        assert used <= share * full and used >= previous
        previous = used
    assert allocate_budget(space, 1.0) == (space.dim,) * len(space.fields)


def test_quantized_tables_round_and_restore(objective):
    module = objective.module
    table = next(iter(module.backbone.model.embedding_dict.values())).weight
    before = table.detach().clone()
    with quantized_tables(module, "int8"):
        levels = (table / (table.abs().amax(dim=1, keepdim=True) / 127)).detach()
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        assert not torch.equal(table, before)
    assert torch.equal(table, before)


# ---------------------------------------------------------------------------------- pruning callback --

class _Constant(pl.LightningModule):
    """Logs a fixed ``val_auc`` each validation (a deterministic metric for a deterministic pruner)."""

    def __init__(self, score: float) -> None:
        super().__init__()
        self.layer, self.score = nn.Linear(2, 1), score

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_auc", self.score)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(trial: optuna.Trial, score: float) -> float:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
                         callbacks=[OptunaPruning(trial, monitor="val_auc")])
    trainer.fit(_Constant(score), data, data)
    return score


@pytest.mark.parametrize("score,state", [(0.25, "PRUNED"), (0.75, "COMPLETE")])
def test_pruning_callback_with_a_threshold_pruner(tmp_path, score, state):
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'p.db'}",
                                pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    study.optimize(lambda t: _fit(t, score), n_trials=1)
    trial = study.trials[0]
    assert trial.state.name == state
    assert trial.intermediate_values == ({0: 0.25} if state == "PRUNED" else {0: 0.75, 1: 0.75, 2: 0.75})


def test_pruning_callback_refuses_multi_objective_and_bad_arguments():
    study = optuna.create_study(directions=["maximize", "minimize"])
    with pytest.raises(ValueError, match="single-objective study.*2 objectives"):
        OptunaPruning(study.ask(), monitor="val_auc")
    single = optuna.create_study(direction="maximize").ask()
    with pytest.raises(ValueError, match="report_every"):
        OptunaPruning(single, report_every="batch")
    with pytest.raises(TypeError, match="optuna Trial"):
        OptunaPruning("trial-0")


def test_a_device_that_is_not_there_fails_before_any_trial(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available here"):
        StudySettings(run_dir=str(run_dir), device="cuda")
    storage = tmp_path / "study.db"
    assert main(["pim", "--run", str(run_dir), "--trials", "2", "--storage", f"sqlite:///{storage}",
                 "--device", "cuda:1"]) == 2
    assert "device 'cuda:1': CUDA is not available here" in capsys.readouterr().err
    assert not storage.exists()                          # nothing trained, no study created


def test_the_objective_scores_on_the_settings_device(run_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)   # auto: the CPU where CUDA is not
    objective = build_objective(StudySettings(run_dir=str(run_dir), device="auto"))
    assert objective.module.device.type == "cpu"
    assert {t.device.type for b in objective.batches + objective.finetune_batches for t in b.values()} == {"cpu"}
    default = build_objective(StudySettings(run_dir=str(run_dir)))
    assert default.module is objective.module                         # one load per run and device


def test_the_trials_show_a_progress_bar_unless_quiet(run_dir, tmp_path, capsys):
    for quiet, storage in ((False, tmp_path / "bar.db"), (True, tmp_path / "quiet.db")):
        assert main(["pim", "--run", str(run_dir), "--trials", "3", "--baseline-epochs", "0",
                     "--storage", f"sqlite:///{storage}", *(["--quiet"] if quiet else [])]) == 0
        err = capsys.readouterr().err
        assert ("3/3" in err) is not quiet, err
    with pytest.raises(TypeError, match="progress must be a bool"):
        StudySettings(run_dir=str(run_dir), progress="yes")
