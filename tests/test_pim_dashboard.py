"""The README's way to open an ``ihas pim`` study in optuna-dashboard: the command ``ihas pim`` prints names the
study's storage, which holds the study's trials; where optuna-dashboard is installed (``pip install
optuna-dashboard``), its WSGI app serves that study from the printed URL."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import torch

from ihas_lightning.cli import main

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> tuple[Path, str]:
    """A tiny supernet, 3 PIM trials on it; the run folder and the storage named by ``dashboard: optuna-dashboard``."""
    root = tmp_path_factory.mktemp("pim_dashboard")
    torch.set_num_threads(1)
    assert main(["supernet", "--rows", "2000", "--dim", "4", "--dnn", "8", "--dim-choices", "2,4", "--epochs", "1",
                 "--batch-size", "256", "--out", str(root / "run"), "--quiet", "--cache-dir", str(root / "cache")]) == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["pim", "--run", str(root / "run"), "--trials", "3", "--seed", "0"]) == 0
    (storage,) = re.findall(r"dashboard: optuna-dashboard (\S+)", out.getvalue())
    return root / "run", storage


def test_ihas_pim_prints_the_dashboard_command_of_its_study(printed: tuple[Path, str]) -> None:
    run, storage = printed
    assert storage == f"sqlite:///{run / 'pim' / 'study.db'}"
    study = optuna.load_study(study_name="pim", storage=storage)
    assert len(study.trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_optuna_dashboard_serves_the_study_from_the_printed_url(printed: tuple[Path, str]) -> None:
    dashboard = pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed")
    _, storage = printed
    app = dashboard.wsgi(storage)
    summaries = _get(app, "/api/studies")["study_summaries"]
    assert [(s["study_name"], len(s["directions"])) for s in summaries] == [("pim", 3)]
    detail = _get(app, f"/api/studies/{summaries[0]['study_id']}")
    study = optuna.load_study(study_name="pim", storage=storage)
    assert {t["number"]: t["values"] for t in detail["trials"]} == {t.number: t.values for t in study.trials}


def _get(app, path: str) -> dict:
    """The JSON of a GET request to the WSGI ``app``, as a browser on the dashboard sends it."""
    environ = {"PATH_INFO": path, "wsgi.errors": io.StringIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda code, headers, *error: status.append(code)))
    assert status == ["200 OK"], environ["wsgi.errors"].getvalue()
    return json.loads(body)
