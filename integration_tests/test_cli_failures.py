"""Every way a command can fail that the user can fix (issue 20), played through ``ihas_lightning.cli.main``: one
line ``ihas CMD: error: ...`` naming the file or option and the fix, exit code 2 (130 after Ctrl+C), no
traceback, and nothing in a run folder changed by a refused command. A new case is one row of ``CASES``.

The cases share one tiny finished run (synthetic, 2000 rows, DeepFM at dimension 4, a 8-unit DNN, two groups),
copied for the cases that change it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ihas_lightning.cli import main

RUN = ["--rows", "2000", "--epochs", "2", "--retrain-epochs", "1", "--dnn", "8", "--dim", "4", "--k", "2",
       "--no-matched-baseline", "--batch-size", "512", "--quiet"]
TRAIN = ["--rows", "2000", "--epochs", "1", "--dnn", "8", "--dim", "4", "--batch-size", "512", "--quiet"]
CRITEO = Path(os.environ.get("IHAS_DATA_DIR", "/work/shared/data")) / "criteo" / "train-10k.txt"


@dataclass
class Case:
    """``argv`` may hold ``{tmp}``, ``{run}`` (a copy of the finished run, made only when used) and ``{cache}``;
    ``setup(tmp, run)`` prepares files before the command and may return a check of what follows it."""

    name: str
    argv: list[str]
    code: int
    message: str
    setup: Callable[[Path, Path], Callable[[], None] | None] | None = None
    marks: list = field(default_factory=list)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _unchanged(run: Path, with_run_json: bool = True) -> Callable[[], None]:
    """A check that the run's metrics, every stage's, and ``run.json`` are as before the command."""
    files = [run / "metrics.json", *run.glob("*/metrics.json")] + [run / "run.json"] * with_run_json
    before = {p: p.read_bytes() for p in files}
    return lambda: [(p.read_bytes() == data) or pytest.fail(f"{p} changed") for p, data in before.items()]


def _set_run_json(run: Path, **changes: dict) -> None:
    saved = json.loads((run / "run.json").read_text())
    for part, values in changes.items():
        saved[part].update(values)
    (run / "run.json").write_text(json.dumps(saved))


def _read_only_folder(tmp: Path) -> Path:
    """A folder nobody may write into (root ignores a folder's mode bits; /sys refuses even root)."""
    if os.geteuid() != 0:
        folder = tmp / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    if not Path("/sys").is_dir():
        pytest.skip("running as root without /sys: no folder refuses a write")
    return Path("/sys")


def _hold_lock(tmp: Path, run: Path) -> Callable[[], None]:
    handle = open(run / ".lock", "a+")                   # another command holds it (flock: per open file)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.truncate(0)
    handle.write("ihas run (pid 4242)")
    handle.flush()
    check = _unchanged(run)

    def release() -> None:
        check()
        handle.close()
    return release


def _crafted_checkpoint(tmp: Path) -> Path:
    """A checkpoint whose unpickling would create ``tmp/ran`` (a ``__reduce__`` payload)."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'ran'}",))
    path = tmp / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    return path


def _crafted_retrain_init(tmp: Path, run: Path) -> Callable[[], None]:
    for stage in ("retrain", "baseline"):
        shutil.rmtree(run / stage)
    (run / "metrics.json").unlink()
    _set_run_json(run, retrain={"init_from": str(_crafted_checkpoint(tmp))})
    return lambda: None if not (tmp / "ran").exists() else pytest.fail("the checkpoint's payload ran")


def _interrupt_mid_run(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, Path], None]:
    """Ctrl+C during training, as Lightning handles it: it catches the KeyboardInterrupt and exits with 1."""
    def interrupted_run(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            sys.exit(1)
        pytest.fail("no KeyboardInterrupt")
    return lambda tmp, run: monkeypatch.setattr("ihas_lightning.cli.pipeline.run_pipeline", interrupted_run)


CASES = [
    # flags (issue 20.7, 20.6): refused in the configs' validation, before any data is read
    Case("negative epochs", ["run", "--epochs", "-1"], 2, "epochs must be an integer >= 1, got -1"),
    Case("zero retrain epochs", ["run", "--retrain-epochs", "0"], 2, "retrain epochs must be an integer >= 1, got 0"),
    Case("zero baseline epochs", ["run", "--baseline-epochs", "0"], 2, "baseline_epochs must be an integer >= 1"),
    Case("zero train epochs", ["train", "--epochs", "0"], 2, "epochs must be an integer >= 1, got 0"),
    Case("negative threads", ["train", "--threads", "-2"], 2, "threads must be an integer >= 0 (0: torch's default)"),
    Case("zero synthetic rows", ["train", "--rows", "0"], 2, "rows must be an integer >= 1, got 0"),
    Case("zero batch size", ["run", "--batch-size", "0"], 2, "batch_size must be an integer >= 1, got 0"),
    Case("negative k", ["run", "--k", "-1"], 2, "k must be >= 1, or 0 to choose it on validation data, got -1"),
    Case("budget above one", ["run", "--budget", "1.5"], 2, "budget must be in (0, 1] or None, got 1.5"),
    Case("warm-up leaves no gated epoch", ["run", "--epochs", "2", "--warmup-epochs", "2"], 2,
         "warmup_epochs=2 leaves no gated epoch of epochs=2: the gates would stay untrained"),
    Case("rows with a data file", ["train", "--data", str(CRITEO), "--rows", "100"], 2,
         "--rows sets the size of synthetic data, and"),
    # files (issue 20.8)
    Case("missing data file", ["train", "--data", "{tmp}/nope.txt", "--format", "criteo"], 2,
         "data '{tmp}/nope.txt' does not exist"),
    Case("a folder as --data", ["train", "--data", "{tmp}", "--format", "criteo", "--out", "{tmp}/out",
                                "--cache-dir", "{cache}", *TRAIN[2:]], 2, "Is a directory: '{tmp}'"),
    Case("--out under a file", ["train", "--out", "{tmp}/file/out", "--cache-dir", "{cache}", *TRAIN], 2,
         "Not a directory: '{tmp}/file", setup=lambda tmp, run: _write(tmp / "file", "") and None),
    Case("read-only cache folder", ["train", "--cache-dir", "{readonly}/cache", "--out", "{tmp}/out", *TRAIN], 2,
         "choose a folder you may write (--out, --cache-dir)"),
    Case("malformed schema entry", ["train", "--data", "{tmp}/rows.csv", "--schema", "{tmp}/schema.json"], 2,
         "schema file '{tmp}/schema.json': schema: 'sparse' must be a list of column names (strings), got 'c'",
         setup=lambda tmp, run: _write(tmp / "schema.json", '{"label": "y", "sparse": "c"}')
         and _write(tmp / "rows.csv", "y,c\n1,a\n") and None),
    Case("truncated schema", ["train", "--data", "{tmp}/rows.csv", "--schema", "{tmp}/schema.json"], 2,
         "schema file '{tmp}/schema.json' cannot be read: Unterminated string starting at: line 1 column 16",
         setup=lambda tmp, run: _write(tmp / "schema.json", '{"label": "y", "spa')
         and _write(tmp / "rows.csv", "y,c\n1,a\n") and None),
    Case("dense value beyond float32", ["train", "--data", "{tmp}/rows.csv", "--schema", "{tmp}/schema.json",
                                        "--cache-dir", "{cache}"], 2,
         "file '{tmp}/rows.csv', line 3, column 'x': expected a number within float32's range (|x| <= 3.4e38), "
         "got '1e200'",
         setup=lambda tmp, run: _write(tmp / "schema.json", '{"label": "y", "sparse": ["c"], "dense": ["x"]}')
         and _write(tmp / "rows.csv", "y,c,x\n1,a,2.5\n0,b,1e200\n") and None),
    # a finished run folder (issue 20.3, 20.4, 20.8)
    Case("other dimension on a finished run", ["run", *RUN[:9], "8", *RUN[10:], "--out", "{run}",
                                               "--cache-dir", "{cache}"], 2,
         "holds a run with other options (--dim 4 -> 8); its results would be relabelled: use a new --out, or "
         "--restart", setup=lambda tmp, run: _unchanged(run)),
    Case("other data and seed on a finished run", ["run", *RUN[2:], "--seed", "1", "--data", str(CRITEO),
                                                   "--format", "criteo", "--out", "{run}"], 2,
         "--data 'synthetic' -> '" + str(CRITEO) + "'; --format None -> 'criteo'; --rows 2000 -> 60000; --seed 0 -> 1",
         setup=lambda tmp, run: _unchanged(run)),
    Case("a second command on a busy run", ["run", *RUN, "--out", "{run}", "--cache-dir", "{cache}"], 2,
         "is in use by ihas run (pid 4242): wait for it to finish, or use another --out", setup=_hold_lock),
    Case("truncated run.json", ["retrain", "--run", "{run}"], 2,
         "'{run}/run.json' is not valid JSON (a run's configuration): Unterminated string starting at: line 1 "
         "column 11",
         setup=lambda tmp, run: _write(run / "run.json", '{"data": {"da') and None),
    Case("empty run.json", ["cluster", "--run", "{run}"], 2, "'{run}/run.json' (a run's configuration) is empty",
         setup=lambda tmp, run: _write(run / "run.json", "{}") and None),
    Case("relative path in an older run.json", ["retrain", "--run", "{run}"], 2,
         "holds the relative path data.data='train.txt' (written by an older version)",
         setup=lambda tmp, run: _set_run_json(run, data={"data": "train.txt", "format": "criteo"})),
    Case("truncated clusters.json", ["retrain", "--run", "{run}", "--backbone", "DCN"], 2,
         "'{run}/cluster/clusters.json' is not a clustering result (JSONDecodeError",
         setup=lambda tmp, run: _write(run / "cluster" / "clusters.json", '{"k": 2, "centr') and None),
    Case("not a run folder", ["retrain", "--run", "{tmp}"], 2, "is not a run directory (no run.json)"),
    Case("crafted --init-from", ["run", *RUN, "--init-from", "{tmp}/evil.ckpt", "--out", "{tmp}/out",
                                 "--cache-dir", "{cache}"], 2,
         "'{tmp}/evil.ckpt' is not a checkpoint to initialize the backbone from (it holds objects other than",
         setup=lambda tmp, run: _crafted_checkpoint(tmp) and (
             lambda: None if not (tmp / "ran").exists() else pytest.fail("the checkpoint's payload ran"))),
    Case("crafted --retrain-init-from", ["retrain", "--run", "{run}"], 2,
         "'{tmp}/evil.ckpt' is not a checkpoint to retrain from (it holds objects other than",
         setup=_crafted_retrain_init),
    # what still works
    Case("the same command resumes a finished run", ["run", *RUN, "--out", "{run}", "--cache-dir", "{cache}",
                                                     "--threads", "0"], 0, "",
         setup=lambda tmp, run: _unchanged(run, with_run_json=False)),       # it records --threads 0
    Case("a truncated stage metrics file is redone", ["cluster", "--run", "{run}"], 0, "",
         setup=lambda tmp, run: _write(run / "cluster" / "metrics.json", '{"k": 2, "gro') and (
             lambda: json.loads((run / "cluster" / "metrics.json").read_text())["k"] == 2 or pytest.fail("k"))),
    Case("a moved run", ["retrain", "--run", "{tmp}/moved"], 0, "",
         setup=lambda tmp, run: shutil.move(run, tmp / "moved") and None),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    cache = root / "cache"
    assert main(["run", *RUN, "--out", str(root / "run"), "--cache-dir", str(cache)]) == 0
    return root / "run", cache


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_cli_failure(case: Case, tmp_path: Path, finished_run: tuple[Path, Path], capsys) -> None:
    run = tmp_path / "run"
    places = {"tmp": str(tmp_path), "run": str(run), "cache": str(finished_run[1])}
    if any("{run}" in a for a in case.argv) or case.name == "a moved run":
        shutil.copytree(finished_run[0], run)
    if any("{readonly}" in a for a in case.argv):
        places["readonly"] = str(_read_only_folder(tmp_path))
    check = case.setup(tmp_path, run) if case.setup else None
    capsys.readouterr()
    code = main([a.format(**places) for a in case.argv])
    err = capsys.readouterr().err
    assert code == case.code, err
    assert case.message.format(**places) in err
    if code == 2:
        lines = [line for line in err.splitlines() if line.startswith("ihas ")]
        assert len(lines) == 1 and lines[0].startswith(f"ihas {case.argv[0]}: error: ") and "Traceback" not in err
    if check is not None:
        check()


def test_ctrl_c_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    before = signal.getsignal(signal.SIGINT)      # default_int_handler, or SIG_IGN under a background shell
    _interrupt_mid_run(monkeypatch)(tmp_path, tmp_path)
    assert main(["run", *RUN, "--out", str(tmp_path / "run")]) == 130
    assert "ihas run: interrupted; rerun the same command to resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before                            # the handler is given back


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got -1"):
        main(["--debug", "run", "--epochs", "-1"])
