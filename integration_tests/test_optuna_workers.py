"""``ihas pim`` workers on shared storage, through the project's own storage, worker and objective code.

Every test runs the PIM study's real objective (the inherited-weight validation AUC of a tiny supernet trained
on MovieLens-100K, plus the analytic cost model) through :mod:`ihas_lightning.pim.storage` (``make_storage``) and
:mod:`ihas_lightning.pim.study` (``run_study``), as ``ihas pim`` does:

* ``ihas pim --workers 4 --trials 20`` (4 worker processes x 5 trials) on a journal file and on PostgreSQL gives
  exactly 20 complete trials numbered 0-19, each with its three objective values and two constraints.
* A worker killed (SIGKILL) mid-trial leaves a RUNNING trial; with ``StudySettings(heartbeat_s=1)`` its
  heartbeat goes stale, the next worker's ``optimize`` fails it, and the ``RetryHeartbeatStaleTrialCallback``
  that ``make_storage`` installs re-queues it with the same parameters, which that worker then runs to
  completion with the objective's own values for those parameters (SQLite and PostgreSQL).

PostgreSQL: ``IHAS_TEST_POSTGRES_URL`` (a SQLAlchemy URL of a database this test may write to) names a server
to use; otherwise the binaries are looked up on PATH and under ``/usr/lib/postgresql/*/bin`` (``.ci/run``
installs them) and a throw-away server runs from a fresh data directory on a free local port, as the
``postgres`` user when the tests run as root (PostgreSQL refuses root), stopped at the end. Without either the
PostgreSQL tests skip, saying what is missing; CI sets ``IHAS_REQUIRE_DATA=1`` (or ``IHAS_REQUIRE_POSTGRES=1``)
to turn that skip into a failure.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
import torch

from ihas_lightning.cli import main
from ihas_lightning.pim import study as pim_study
from ihas_lightning.pim.storage import make_storage
from ihas_lightning.pim.study import StudySettings, build_objective, candidate_of, run_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
COMPLETE, RUNNING, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING,
                           optuna.trial.TrialState.FAIL)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir: Path) -> Path:
    """A tiny supernet trained by `ihas supernet` on MovieLens-100K: dim 4, DNN 8, one epoch (val AUC ~0.74)."""
    root = tmp_path_factory.mktemp("pim_workers")
    torch.set_num_threads(1)
    assert main(["supernet", "--data", str(data_dir / "movielens" / "ml-100k"), "--format", "movielens-100k",
                 "--dim", "4", "--dnn", "8", "--dim-choices", "1,2,4", "--epochs", "1", "--batch-size", "2048",
                 "--lr", "3e-3", "--out", str(root / "run"), "--quiet", "--cache-dir", str(root / "cache")]) == 0
    return root / "run"


def _four_workers_by_five_trials(run_dir: Path, url: str) -> None:
    """``ihas pim --workers 4 --trials 20`` on ``url``: 20 complete trials, numbered 0-19, real values."""
    name = f"workers-{uuid.uuid4().hex[:8]}"          # a fresh study, also on a reused server
    assert main(["pim", "--run", str(run_dir), "--trials", "20", "--workers", "4", "--storage", url,
                 "--study-name", name, "--seed", "0"]) == 0
    study = optuna.load_study(study_name=name, storage=make_storage(url, heartbeat_s=None))
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(20))
    assert all(t.state == COMPLETE for t in trials)
    baseline = study.user_attrs["baseline_auc"]
    assert 0.7 < baseline < 0.8
    for trial in trials:
        auc, latency, energy = trial.values
        assert 0.5 < auc < 0.8 and latency > 0 and energy > 0
        assert trial.user_attrs["cost"]["auc_drop"] == pytest.approx(baseline - auc, abs=1e-12)
        assert set(trial.constraints) == {"capacity", "auc_drop"}
    # Four workers, four seeds: the sampler's start-up draws differ, so the 20 trials are not 5 repeated sets.
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) >= 16
    report = json.loads((run_dir / "pim" / "pareto.json").read_text())
    assert report["trials"] == {"COMPLETE": 20}


def test_four_workers_on_a_journal_file(run_dir, tmp_path):
    _four_workers_by_five_trials(run_dir, f"journal:{tmp_path / 'journal.log'}")


# ------------------------------------------------------------------------------------------ PostgreSQL --

def _require() -> bool:
    return os.environ.get("IHAS_REQUIRE_POSTGRES") == "1" or os.environ.get("IHAS_REQUIRE_DATA") == "1"


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).parent)):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """``IHAS_TEST_POSTGRES_URL``, or a throw-away server's empty database ``optuna`` (stopped afterwards)."""
    given = os.environ.get("IHAS_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bin_dir = _pg_bin()
    if bin_dir is None:
        message = ("no PostgreSQL server: IHAS_TEST_POSTGRES_URL is not set and the server binaries (initdb, "
                   "pg_ctl) are neither on PATH nor under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
        pytest.fail(message) if _require() else pytest.skip(message)
    # a directory the postgres user can reach (pytest's tmp_path lives under a root-only 0700 folder)
    base = Path(tempfile.mkdtemp(prefix="ihas_pg_", dir="/tmp"))
    data = base / "data"
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, user="postgres", group="postgres")
        prefix = ["runuser", "-u", "postgres", "--"]

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(prefix + args, check=True, capture_output=True, text=True, timeout=120)

    port = _free_port()
    run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60", "-o",
         f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off", "start"])
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE optuna")
        connection.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"           # no driver named, as in the README
    finally:
        subprocess.run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       check=False, capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_four_workers_on_postgresql(run_dir, postgres_url):
    _four_workers_by_five_trials(run_dir, postgres_url)


# ------------------------------------------------------------------------------- heartbeat and re-queue --

def _hang_in_first_trial(settings: StudySettings, marker: str) -> None:
    """A worker (``run_study``, one process) whose objective stops for good after drawing its parameters."""
    def hang(self, candidate, batches=None):
        Path(marker).write_text("in trial")
        time.sleep(600)                                  # killed here

    pim_study.PIMObjective.evaluate = hang               # in this forked process only
    run_study(settings)


def _retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_worker_trial_is_failed_and_retried_with_same_params(run_dir, tmp_path, request, backend):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'hb.db'}"
    settings = StudySettings(run_dir=str(run_dir), trials=1, storage=url, heartbeat_s=1,
                             study_name=f"heartbeat-{uuid.uuid4().hex[:8]}")
    objective = build_objective(settings)            # loaded before the fork: the victim inherits it
    marker = tmp_path / "in_trial"
    victim = multiprocessing.get_context("fork").Process(target=_hang_in_first_trial, args=(settings, str(marker)))
    victim.start()
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert victim.is_alive(), f"the worker exited (code {victim.exitcode}) before starting its trial"
        assert time.monotonic() < deadline, "the worker never started its trial"
        time.sleep(0.05)
    victim.kill()                                        # SIGKILL: no clean-up, the trial stays RUNNING
    victim.join(timeout=30)
    storage = make_storage(url, heartbeat_s=settings.heartbeat_s)
    (killed,) = optuna.load_study(study_name=settings.study_name, storage=storage).trials
    assert killed.state == RUNNING and killed.params
    # Wait until the storage itself calls the heartbeat stale (grace period 2 x heartbeat_s), however slow the
    # machine: a fixed sleep raced the last beat on a loaded CPU.
    study_id = storage.get_study_id_from_name(settings.study_name)
    deadline = time.monotonic() + 60
    while killed._trial_id not in storage._get_stale_trial_ids(study_id):       # what fail_stale_trials reads
        assert time.monotonic() < deadline, "the killed worker's heartbeat never went stale"
        time.sleep(0.2)

    study = run_study(settings, objective)               # its optimize fails the stale trial, then runs the retry
    trials = study.trials
    assert [t.state for t in trials] == [FAIL, COMPLETE]
    retry = trials[1]
    assert _retried_from(retry) == killed.number
    assert retry.params == killed.params
    expected = objective.evaluate(candidate_of(objective.space, killed.params))
    assert retry.values == pytest.approx([expected["auc"], expected["latency_ratio"], expected["energy_ratio"]],
                                         abs=1e-12)
    # A second continuation adds a fresh trial and does not retry the finished one again.
    study = run_study(settings, objective)
    assert [t.state for t in study.trials] == [FAIL, COMPLETE, COMPLETE]
    assert _retried_from(study.trials[2]) is None
