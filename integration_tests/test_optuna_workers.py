"""Optuna workers on shared storage: a journal file and a real PostgreSQL server started here.

* 4 worker processes x 5 trials on one storage give exactly 20 finished trials with unique numbers.
* A worker killed mid-trial (SIGKILL) leaves a RUNNING trial; its heartbeat goes stale, the next worker's
  ``optimize`` fails it, and ``RetryHeartbeatStaleTrialCallback`` re-queues it with the same parameters,
  which that worker then runs to completion.

PostgreSQL: the binaries are looked up on PATH and under ``/usr/lib/postgresql/*/bin`` (installed with apt
when missing and possible; ``.ci/run`` installs them). The server runs from a fresh data directory on a free
local port, as the ``postgres`` user when the tests run as root (PostgreSQL refuses root), and is stopped at
the end. The test skips only when there are no binaries and no way to install them; CI sets
``IHAS_REQUIRE_POSTGRES=1`` or ``IHAS_REQUIRE_DATA=1`` to turn that skip into a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)

WORKER = r'''
import os, sys, time, warnings
warnings.simplefilter("ignore")
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, n_trials, mode, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if url.startswith("journal:"):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url[len("journal:"):]))
else:
    storage = optuna.storages.RDBStorage(
        url, heartbeat_interval=1, grace_period=2,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
study = optuna.load_study(study_name="workers", storage=storage, sampler=optuna.samplers.RandomSampler())

def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    if mode == "hang":
        with open(marker, "w") as f:
            f.write(f"{trial.number} {x!r}")
        time.sleep(600)  # killed here
    time.sleep(0.01)
    return x * x

study.optimize(objective, n_trials=n_trials)
'''


def _workers(tmp_path: Path, url: str, count: int, n_trials: int, mode: str = "fast") -> list[subprocess.Popen]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return [subprocess.Popen([sys.executable, str(script), url, str(n_trials), mode, str(tmp_path / f"marker{i}")])
            for i in range(count)]


def _create(storage: optuna.storages.BaseStorage | str) -> optuna.Study:
    return optuna.create_study(study_name="workers", storage=storage, direction="minimize", load_if_exists=True)


def _four_by_five(tmp_path: Path, url: str, storage) -> None:
    _create(storage)
    processes = _workers(tmp_path, url, 4, 5)
    assert [p.wait(timeout=240) for p in processes] == [0, 0, 0, 0]
    trials = optuna.load_study(study_name="workers", storage=storage).trials
    assert len(trials) == 20
    assert sorted(t.number for t in trials) == list(range(20))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_four_workers_on_a_journal_file(tmp_path):
    path = tmp_path / "journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    _four_by_five(tmp_path, f"journal:{path}", storage)


# ------------------------------------------------------------------------------------------ PostgreSQL --

def _require() -> bool:
    return os.environ.get("IHAS_REQUIRE_POSTGRES") == "1" or os.environ.get("IHAS_REQUIRE_DATA") == "1"


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _install_postgres() -> None:
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=False, env=env, capture_output=True,
                       timeout=900)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server: URL of an empty database ``optuna``; stopped and deleted afterwards."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        _install_postgres()
        bin_dir = _pg_bin()
    if bin_dir is None:
        message = "PostgreSQL binaries (initdb, pg_ctl) not found and apt-get could not install them"
        pytest.fail(message) if _require() else pytest.skip(message)
    as_root = os.geteuid() == 0
    # a directory the postgres user can reach (pytest's tmp_path lives under a root-only 0700 folder)
    base = Path(tempfile.mkdtemp(prefix="ihas_pg_", dir="/tmp"))
    data = base / "data"
    prefix: list[str] = []
    if as_root:
        shutil.chown(base, user="postgres", group="postgres")
        runner = shutil.which("runuser")
        prefix = [runner, "-u", "postgres", "--"] if runner else ["su", "postgres", "-s", "/bin/sh", "-c"]
    def run(args: list[str], **kw) -> subprocess.CompletedProcess:
        command = args if not prefix or prefix[0] != "su" else [" ".join(args)]
        return subprocess.run(prefix + command, check=True, capture_output=True, text=True, timeout=120, **kw)
    port = _free_port()
    run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60", "-o",
         f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100", "start"])
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE optuna")
        connection.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(prefix + ([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
                                 if not prefix or prefix[0] != "su"
                                 else [f"{bin_dir / 'pg_ctl'} -D {data} -m fast -w stop"]),
                       check=False, capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_four_workers_on_postgresql(tmp_path, postgres_url):
    _four_by_five(tmp_path, postgres_url, postgres_url)


def _heartbeat_storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=1, grace_period=2,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_killed_worker_trial_is_failed_and_retried_with_same_params(tmp_path, request, backend):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'hb.db'}"
    storage = _heartbeat_storage(url)
    _create(storage)
    (victim,) = _workers(tmp_path, url, 1, 1, mode="hang")
    marker = tmp_path / "marker0"
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text():
        assert victim.poll() is None, "the worker exited before starting its trial"
        assert time.monotonic() < deadline, "the worker never started its trial"
        time.sleep(0.1)
    number, x = marker.read_text().split()
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    study = optuna.load_study(study_name="workers", storage=storage)
    assert study.trials[int(number)].state == optuna.trial.TrialState.RUNNING
    time.sleep(3.5)  # > grace period: the heartbeat is stale now
    (survivor,) = _workers(tmp_path, url, 1, 1)  # its optimize fails the stale trial, then runs the retry
    assert survivor.wait(timeout=120) == 0
    trials = optuna.load_study(study_name="workers", storage=storage).trials
    killed = trials[int(number)]
    assert killed.state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
               == killed.number]
    assert len(retries) == 1
    assert retries[0].params == killed.params == {"x": float(x)}
    assert retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].value == pytest.approx(float(x) ** 2)
