"""``ihas export`` and ``examples/serve.py``: the exported model predicts as the trained one without
ihas_lightning or deepctr-torch, routing included, and the served encoding equals the training encoders'."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ihas_lightning.cli import main
from ihas_lightning.data.encoders import OOV_ID, FeatureEncoder
from ihas_lightning.data.schema import MultiValuedField, RawColumns, Schema
from ihas_lightning.data.loader import to_batch
from ihas_lightning.export import export_model, load_run_model, serving_spec
from ihas_lightning.model import IHASModel
from ihas_lightning.modules import RetrainModule

SERVE = Path(__file__).resolve().parents[1] / "examples" / "serve.py"
FORMATS = ["torchscript", "onnx"]
# Run serve.py as a script with the package and deepctr-torch unimportable (None in sys.modules).
_HIDDEN = ("import runpy, sys; sys.modules['ihas_lightning'] = None; sys.modules['deepctr_torch'] = None; "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _serve_module():
    spec = importlib.util.spec_from_file_location("example_serve", SERVE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _needs_runtime(format: str) -> None:
    if format == "onnx":
        pytest.importorskip("onnx", reason="ONNX export needs the onnx package (the 'export' extra)")
        pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime (the 'export' extra)")


def _serve_hidden(model: Path, rows_flag: str, rows: Path, cwd: Path) -> np.ndarray:
    """Probabilities printed by serve.py in a fresh interpreter that cannot import the package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _HIDDEN, str(SERVE), str(model), rows_flag, str(rows)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return np.array([float(x) for x in done.stdout.split()])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_run")
    code = main(["run", "--rows", "3000", "--epochs", "2", "--retrain-epochs", "1", "--dnn", "16", "--dim", "8",
                 "--batch-size", "256", "--quiet", "--mde-baseline", "--out", str(out / "run"),
                 "--cache-dir", str(out / "cache")])
    assert code == 0
    return out / "run"


def _raw_rows(encoder: FeatureEncoder, rows: int, seed: int) -> RawColumns:
    """Known categories, unseen ones ('never-seen-*') and missing ones (''), dense values with NaN."""
    rng = np.random.default_rng(seed)
    schema = encoder.schema

    def tokens(name: str) -> list[str]:
        vocabulary = encoder.vocabularies[name]
        known = vocabulary.tokens if vocabulary.tokens is not None else [str(i) for i in range(vocabulary.range_size)]
        return [*known[:20], "never-seen-a", "never-seen-b", ""]

    sparse = {name: np.array(rng.choice(tokens(name), rows), dtype=object) for name in schema.sparse}
    dense = {name: np.where(rng.random(rows) < 0.2, np.nan, rng.exponential(4.0, rows) - 1.0) for name in schema.dense}
    multi = {m.name: [[str(t) for t in rng.choice([x for x in tokens(m.name) if x], rng.integers(0, m.max_len + 3))]
                      for _ in range(rows)] for m in schema.multivalued}
    sparse[schema.sparse[0]][:3] = ["never-seen-a", "", "never-seen-b"]
    return RawColumns(schema, np.zeros(rows, dtype=np.float32), sparse, dense, multi)


def _as_json_columns(raw: RawColumns) -> dict:
    columns: dict = {name: list(values) for name, values in raw.sparse.items()}
    columns |= {name: [None if np.isnan(v) else float(v) for v in values] for name, values in raw.dense.items()}
    columns |= {name: rows for name, rows in raw.multivalued.items()}
    return columns


def _write_csv(raw: RawColumns, path: Path) -> None:
    schema = raw.schema
    separators = {m.name: m.separator for m in schema.multivalued}
    header = [schema.label, *schema.sparse, *schema.dense, *separators]
    lines = [",".join(header)]
    for i in range(len(raw)):
        cells = ["0", *(raw.sparse[c][i] for c in schema.sparse),
                 *("" if np.isnan(raw.dense[c][i]) else repr(float(raw.dense[c][i])) for c in schema.dense),
                 *(separators[m].join(raw.multivalued[m][i]) for m in separators)]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("format", FORMATS)
def test_exported_run_predicts_as_the_trained_models_without_the_package(run_dir, tmp_path, format) -> None:
    _needs_runtime(format)
    suffix = ".pt" if format == "torchscript" else ".onnx"
    ihas = IHASModel.load(run_dir / "retrain" / "ihas_model.pt")
    baseline, encoder = load_run_model(run_dir, "baseline")
    baseline.encoder = encoder
    raw = _raw_rows(ihas.encoder, rows=64, seed=1)
    rows_json = tmp_path / "rows.json"
    rows_json.write_text(json.dumps(_as_json_columns(raw)))
    rows_csv = tmp_path / "rows.csv"
    _write_csv(raw, rows_csv)
    serving_dir = tmp_path / "serving"                           # outside the repository, like a server's
    serving_dir.mkdir()
    for name, expected in (("ihas", ihas.predict_raw(raw)), ("baseline", baseline.predict_raw(raw))):
        out = tmp_path / f"{name}{suffix}"
        assert main(["export", "--run", str(run_dir), "--format", format, "--model", name, "--out", str(out)]) == 0
        assert (tmp_path / f"{name}.encoders.json").is_file()
        for flag, rows in (("--json", rows_json), ("--csv", rows_csv)):
            served = _serve_hidden(out, flag, rows, serving_dir)
            assert served.shape == expected.shape == (64,)
            np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
    assert ihas.encoder.oov_rate(ihas.encoder.transform(raw)) > 0        # the rows did hold unseen categories


def test_served_encoding_equals_the_training_encoders(tmp_path) -> None:
    encoder, raw = _multi_field_data(rows=300, seed=2)
    serve = _serve_module()
    spec = json.loads(json.dumps(serving_spec(encoder)))                # as written to and read from disk
    served = serve.encode(spec, _as_json_columns(raw))
    expected = encoder.transform(raw)
    np.testing.assert_array_equal(served["sparse"], expected.sparse)
    np.testing.assert_array_equal(served["dense"], expected.dense)
    np.testing.assert_array_equal(served["multi"], expected.multi)
    assert served["sparse"][0, 0] == OOV_ID and served["sparse"][1, 0] == 0      # unseen -> OOV, '' -> missing
    assert (served["multi"] == OOV_ID).any()


def _multi_field_data(rows: int, seed: int) -> tuple[FeatureEncoder, RawColumns]:
    """An encoder fitted on random rows of 3 sparse, 2 dense (one logged) and one multi-valued field."""
    rng = np.random.default_rng(seed)
    schema = Schema(label="y", sparse=("a", "b", "c"), dense=("n", "m"), log_dense=("m",),
                    multivalued=(MultiValuedField("tags", separator="|", max_len=4),))
    fit_rows = 400
    raw = RawColumns(schema, np.zeros(fit_rows, dtype=np.float32),
                     {name: np.array([f"{name}{i}" for i in rng.integers(0, 12, fit_rows)], dtype=object)
                      for name in schema.sparse},
                     {"n": rng.normal(3.0, 2.0, fit_rows), "m": rng.exponential(10.0, fit_rows)},
                     {"tags": [[f"t{t}" for t in rng.integers(0, 9, rng.integers(0, 6))] for _ in range(fit_rows)]})
    encoder = FeatureEncoder(schema).fit(raw)
    return encoder, _raw_rows(encoder, rows, seed + 1)


def _routed_model(router: str, group_dense: bool, seed: int = 0) -> tuple[IHASModel, RawColumns]:
    """A RetrainModule with 3 groups of different widths whose router sends the rows to several groups."""
    torch.manual_seed(seed)
    encoder, raw = _multi_field_data(rows=96, seed=seed + 5)
    fields = encoder.schema.embedded_fields
    dims = [[8, 8, 8, 8], [2, 6, 1, 4], [4, 1, 8, 2]]
    module = RetrainModule(encoder.schema, encoder.vocab_sizes, group_dims=dims,
                           centroids=np.zeros((3, len(fields) * 8)).tolist(), dim=8, dnn_hidden_units=(16,),
                           router=router, router_columns=2, group_dense=group_dense, seed=seed)
    model = IHASModel(module, encoder)
    with torch.no_grad():                            # fresh tables are ~1e-4: make every column matter
        for table in module.backbone.tables():
            table.weight.normal_(0.0, 0.7)
    if router == "linear":
        module.router.weight.copy_(torch.randn_like(module.router.weight) * 5.0)
    else:                                            # centroids: the masks of three different rows
        with torch.no_grad():                        # a fresh gate network gives every row the same mask
            for parameter in module.router.gates.out.parameters():
                parameter.normal_(0.0, 1.0)
        batch = to_batch(encoder.transform(raw))
        masks = module.router.masks(module.backbone.field_embeddings(batch))
        distinct = np.unique(masks.numpy(), axis=0, return_index=True)[1][:3]
        assert len(distinct) == 3, "the random gates gave fewer than 3 distinct masks"
        module.router.centroids.copy_(masks[torch.as_tensor(np.sort(distinct))])
    if group_dense:                                  # the groups' dense layers differ
        with torch.no_grad():
            for parameter in module.group_params.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return model, raw


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize(("router", "group_dense"), [("linear", False), ("gates", False), ("linear", True)])
def test_routing_survives_export(tmp_path, format, router, group_dense) -> None:
    _needs_runtime(format)
    model, raw = _routed_model(router, group_dense)
    encoded = to_batch(model.encoder.transform(raw))
    groups = model.predict_groups(encoded)
    assert len(groups.unique()) == 3                                     # every group serves some rows
    expected = model.predict_raw(raw)
    model.module.train()
    files = export_model(model, tmp_path / ("m.pt" if format == "torchscript" else "m.onnx"), format)
    assert model.module.training                                          # exporting leaves its modes as they were
    served = _serve_module().predict(files.model, {k: encoded[k].numpy() for k in ("sparse", "dense", "multi")})
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
    one_row = _serve_module().predict(files.model, {k: encoded[k][-1:].numpy() for k in ("sparse", "dense", "multi")})
    np.testing.assert_allclose(one_row, expected[-1:], atol=1e-5, rtol=0)          # the batch axis is dynamic
    # narrow groups change the prediction: a model routed to group 0 alone would not match
    for name in ("group_dims", "group_masks"):                          # every group given group 0's dims
        groups = getattr(model.module, name)
        groups.copy_(groups[:1].clone().expand_as(groups))
    assert np.abs(model.predict_raw(raw) - expected).max() > 1e-2


def test_export_defaults_to_the_model_the_run_kept_on_validation(run_dir, tmp_path, capsys) -> None:
    # The run's summary says which model to ship (DIR/metrics.json's selection); `ihas export` without --model
    # exports that one, whichever it is: iHAS, the field-wise model, or a baseline of iHAS's footprint.
    import shutil
    encoder = IHASModel.load(run_dir / "retrain" / "ihas_model.pt").encoder
    batch = to_batch(encoder.transform(_raw_rows(encoder, rows=32, seed=3)))
    arrays = {k: batch[k].numpy() for k in ("sparse", "dense", "multi")}
    kept = json.loads((run_dir / "metrics.json").read_text())["selection"]["kept"]
    predictions = {}
    for model in ("ihas", "fieldwise", "baseline_matched", "baseline_mde"):
        module, _ = load_run_model(run_dir, model)
        with torch.no_grad():
            predictions[model] = torch.sigmoid(module.eval()(batch)).numpy()
    for forced in dict.fromkeys(("fieldwise", "baseline_mde", kept)):
        run = tmp_path / f"run_{forced}"
        shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("tensorboard", "export"))
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["selection"]["kept"] = forced
        (run / "metrics.json").write_text(json.dumps(metrics))
        assert main(["export", "--run", str(run), "--format", "torchscript"]) == 0
        assert f"exported: {forced} (the model the run kept on validation)" in capsys.readouterr().out
        served = _serve_module().predict(run / "export" / f"{forced}.pt", arrays)
        np.testing.assert_allclose(served, predictions[forced], atol=1e-5, rtol=0)
    assert np.abs(predictions["baseline_mde"] - predictions["ihas"]).max() > 1e-4     # other models, other outputs
    # the mixed-dimension baseline is read where its kept alpha's widths were trained (alphas may share a folder)
    mde = json.loads((run_dir / "baseline_mde" / "metrics.json").read_text())
    kept_at = next(c["trained_in"] for c in mde["candidates"] if c["alpha"] == mde["kept_alpha"])
    module, _ = load_run_model(run_dir, "baseline_mde")
    assert module.field_dims == {f: int(d) for f, d in mde["dims"].items()}
    assert (run_dir / kept_at / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["--format", "tflite"], "unknown export format 'tflite'"),
    (["--format", "onnx", "--model", "nope"], "unknown model 'nope'"),
])
def test_bad_format_or_model_is_one_line(run_dir, capsys, argv, message) -> None:
    assert main(["export", "--run", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and err.startswith("ihas export: error:")


def test_missing_run_is_one_line(tmp_path, capsys) -> None:
    assert main(["export", "--run", str(tmp_path / "absent"), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a run folder" in err
