"""The compact served form (``CompactGroups``): each group at its own widths predicts as the zero-padded
RetrainModule does, routes alike, exports to TorchScript and executes the matmul FLOPs ``flops.py`` counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ihas_lightning.compact import CompactGroups, compact_or_none
from ihas_lightning.export import export_model
from ihas_lightning.flops import flops_breakdown
from ihas_lightning.model import IHASModel
from ihas_lightning.modules import RetrainModule

from _retrain_fixtures import D, routed_module, sample_batch, take_rows

# (K, F) dims with groups of different widest fields (8, 6, 5: CIN and FM pad to those), field C3 at 0 in
# group 1, and C8 stored at 2 columns.
DIMS = [[8, 4, 4, 2, 8, 2, 4, 2],
        [2, 6, 0, 4, 2, 6, 2, 2],
        [4, 2, 5, 3, 4, 4, 5, 2]]
CASES = {                                   # backbone, options
    "DeepFM": ("DeepFM", {}),
    "DeepFM-bn": ("DeepFM", {"dnn_use_bn": True}),
    "DCN": ("DCN", {"cross_num": 3}),
    "DCN-matrix": ("DCN", {"cross_num": 2, "cross_parameterization": "matrix"}),
    "DCN-deep-only": ("DCN", {"cross_num": 0}),
    "WDL": ("WDL", {}),
    "NFM": ("NFM", {}),
    "xDeepFM": ("xDeepFM", {"cin_layer_size": (8, 5)}),
}


def _perturbed(module: RetrainModule, seed: int) -> RetrainModule:
    """Dense weights and BatchNorm statistics moved off their initial values (DeepCTR starts the DNN at std
    1e-4 and the cross biases at 0, where a wrong constant would not show)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if ".embedding_dict." in name or not name.startswith(("backbone.", "group_params.")):
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.is_floating_point():
                tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator))
    return module.eval()


def _linear_routed(dm, backbone: str, options: dict, group_dense: bool = False, seed: int = 3) -> RetrainModule:
    """Linear router on 2 columns per field, random weights large enough to spread rows over every group."""
    torch.manual_seed(seed)
    module = RetrainModule(dm.schema, dm.vocab_sizes, group_dims=DIMS, centroids=torch.zeros(3, 8 * D),
                           backbone=backbone, dim=D, dnn_hidden_units=(16, 8), options=options, router="linear",
                           router_columns=2, group_dense=group_dense, seed=seed)
    with torch.no_grad():
        for table in module.backbone.tables():
            table.weight.normal_(0.0, 0.3)
        module.router.weight.copy_(torch.randn_like(module.router.weight) * 5.0)
    return _perturbed(module, seed)


def _module(dm, case: str, router: str, group_dense: bool = False) -> RetrainModule:
    backbone, options = CASES[case]
    if router == "gates":
        return _perturbed(routed_module(dm, group_dims=DIMS, backbone=backbone, options=options,
                                        group_dense=group_dense), seed=5)
    return _linear_routed(dm, backbone, options, group_dense)


def _check_equal(module: RetrainModule, compact: CompactGroups, batch: dict) -> torch.Tensor:
    """Compact and zero-padded logits agree (probabilities within 1e-5); returns the batch's groups."""
    with torch.no_grad():
        reference = module(batch)
        groups = module.last_groups
        logits = compact(batch)
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), torch.sigmoid(reference).numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits.numpy(), reference.numpy(), atol=1e-5, rtol=1e-5)
    assert torch.equal(compact.route(compact.rows(batch)), groups)                  # routes as the module does
    return groups


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("router", ["gates", "linear"])
def test_compact_predicts_as_the_zero_padded_module(retrain_dm, case: str, router: str) -> None:
    module = _module(retrain_dm, case, router)
    compact = CompactGroups.from_module(module)
    batch = sample_batch(retrain_dm, "train", n=300)
    groups = _check_equal(module, compact, batch)
    assert torch.bincount(groups, minlength=3).min() >= 10                            # the batch mixes groups
    for row in (0, 1, 299):                                                            # batches of one row
        _check_equal(module, compact, take_rows(batch, torch.tensor([row])))
    # each group computes at its own widths: live columns = its dims + the 4 dense fields
    for head, dims in zip(compact.heads, DIMS):
        assert head.live_cols.numel() == sum(dims) + 4
        kept = [d for d in dims if d > 0]
        assert (head.fields, head.width) == (len(kept), max(kept))
        if hasattr(head, "dnn") and case != "NFM":
            assert head.dnn.weight0.shape[1] == sum(dims) + 4
    # and the widths matter: the narrow groups' logits differ from the widest group's on the same rows
    with torch.no_grad():
        rows = compact.rows(batch)
        assert (compact.heads[1](rows) - compact.heads[0](rows)).abs().max() > 1e-2


@pytest.mark.parametrize("case", ["DeepFM", "DCN", "xDeepFM"])
def test_group_dense_copies_compact(retrain_dm, case: str) -> None:
    module = _module(retrain_dm, case, "linear", group_dense=True)
    groups = _check_equal(module, CompactGroups.from_module(module), sample_batch(retrain_dm, "train", n=300))
    assert len(groups.unique()) == 3


def test_an_empty_group_and_one_group(retrain_dm) -> None:
    module = _module(retrain_dm, "DCN", "linear")
    batch = sample_batch(retrain_dm, "train", n=300)
    groups = module.route(module.backbone.field_embeddings(batch))
    _check_equal(module, CompactGroups.from_module(module), take_rows(batch, groups != 1))  # group 1 gets no row
    single = _perturbed(RetrainModule(retrain_dm.schema, retrain_dm.vocab_sizes, group_dims=DIMS[1:2],
                                      centroids=torch.zeros(1, 8 * D), dim=D, dnn_hidden_units=(16,),
                                      router="linear", router_columns=2), seed=2)
    compact = CompactGroups.from_module(single)
    assert compact.router is None
    _check_equal(single, compact, batch)


def test_groups_with_the_same_dims_share_a_head(retrain_dm) -> None:
    batch = sample_batch(retrain_dm, "train", n=300)
    for dims, head_of in (([DIMS[0], DIMS[2], DIMS[0]], [0, 1, 0]), ([DIMS[1]] * 3, [0, 0, 0])):
        module = _perturbed(routed_module(retrain_dm, group_dims=dims, backbone="DCN"), seed=4)
        compact = CompactGroups.from_module(module)
        assert compact.head_of_group.tolist() == head_of and len(compact.heads) == max(head_of) + 1
        groups = _check_equal(module, compact, batch)
        assert len(groups.unique()) == 3                                   # the module did route to all three
    grouped = _module(retrain_dm, "DeepFM", "linear", group_dense=True)
    assert len(CompactGroups.from_module(grouped).heads) == 3                # own dense layers: never shared


def test_unsupported_backbone_falls_back_with_a_warning(retrain_dm, tmp_path: Path) -> None:
    module = _perturbed(routed_module(retrain_dm, group_dims=DIMS, backbone="AutoInt"), seed=1)
    with pytest.warns(UserWarning, match="backbone AutoInt has no compact form"):
        assert compact_or_none(module) is None
    model = IHASModel(module, retrain_dm.encoder)
    batch = sample_batch(retrain_dm, n=50)
    with pytest.warns(UserWarning, match="zero-padded"):
        probabilities = model.predict(batch)
    with torch.no_grad():
        np.testing.assert_allclose(probabilities.numpy(), torch.sigmoid(module(batch)).numpy(), atol=1e-6)


def test_ihas_model_rebuilds_the_compact_form_after_a_weight_change(retrain_dm) -> None:
    module = _module(retrain_dm, "DeepFM", "linear")
    model = IHASModel(module, retrain_dm.encoder)
    batch = sample_batch(retrain_dm, n=100)
    before = model.predict(batch)
    assert model.compact() is model.compact()                                        # built once per state
    with torch.no_grad():
        module.backbone.model.dnn.linears[0].weight.mul_(3.0)
    after = model.predict(batch)
    with torch.no_grad():
        np.testing.assert_allclose(after.numpy(), torch.sigmoid(module(batch)).numpy(), atol=1e-5)
    assert (after - before).abs().max() > 1e-3


_LOAD_WITH_TORCH_ONLY = """
import json, sys
sys.modules['ihas_lightning'] = None; sys.modules['deepctr_torch'] = None
import torch
model = torch.jit.load(sys.argv[1])
inputs = torch.load(sys.argv[2])
print(json.dumps({"p": model(*inputs).tolist(), "keys": sorted(model.state_dict())}))
"""


@pytest.mark.parametrize("case", ["DeepFM", "DCN", "xDeepFM"])
def test_torchscript_export_is_the_compact_model(retrain_dm, tmp_path: Path, case: str) -> None:
    module = _module(retrain_dm, case, "linear")
    model = IHASModel(module, retrain_dm.encoder)
    batch = sample_batch(retrain_dm, n=200)
    files = export_model(model, tmp_path / "m.pt")
    inputs = (batch["sparse"], batch["dense"], batch["multi"])
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", _LOAD_WITH_TORCH_ONLY, str(files.model), str(tmp_path / "inputs.pt")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    served = json.loads(done.stdout)
    with torch.no_grad():
        np.testing.assert_allclose(served["p"], torch.sigmoid(module(batch)).numpy(), atol=1e-5, rtol=0)
    assert any(k.startswith("compact.heads.2.") for k in served["keys"])
    assert not any(k.startswith("backbone.") for k in served["keys"])                 # no full-width layers
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)             # asked for, not a fallback: no warning
        files = export_model(model, tmp_path / "z.pt", compact=False)
    padded = torch.jit.load(str(files.model))                  # the zero-padded export is still there
    assert any(k.startswith("backbone.model.dnn.") for k in padded.state_dict())
    np.testing.assert_allclose(padded(*inputs).detach().numpy(), served["p"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["DCN", "NFM", "xDeepFM"])
def test_onnx_export_of_the_compact_model(retrain_dm, tmp_path: Path, case: str) -> None:
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (the 'export' extra)")
    onnxruntime = pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime (the 'export' extra)")
    module = _module(retrain_dm, case, "gates")
    batch = sample_batch(retrain_dm, "train", n=200)
    files = export_model(IHASModel(module, retrain_dm.encoder), tmp_path / "m.onnx", "onnx")
    session = onnxruntime.InferenceSession(str(files.model), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    with torch.no_grad():
        expected = torch.sigmoid(module(batch)).numpy()
    for rows in (slice(None), slice(7, 8)):                         # a mixed batch, then one row
        feed = {k: batch[k][rows].numpy() for k in ("sparse", "dense", "multi") if k in wanted}
        np.testing.assert_allclose(session.run(None, feed)[0], expected[rows], atol=1e-5, rtol=0)


def _matmul_flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize(("case", "interaction"), [("DeepFM", "fm"), ("DCN", "cross"), ("WDL", "none")])
def test_flops_of_what_executes_are_what_flops_py_counts(retrain_dm, case: str, interaction: str) -> None:
    """Per sample of one group's rows, the compact model's matmul FLOPs are flops.py's figure for that group
    minus its elementwise parts (FM, the cross layers' scale/bias/residual), plus the two terms flops.py leaves
    out by convention or counts apart: the first-order dense term and the router."""
    module = _module(retrain_dm, case, "linear")
    compact = CompactGroups.from_module(module)
    batch = sample_batch(retrain_dm, "train", n=300)
    groups = compact.route(compact.rows(batch))
    dense, layers = 4, CASES[case][1].get("cross_num", 0)
    padded_per_sample, compact_per_sample = [], []
    for group, dims in enumerate(DIMS):
        rows = take_rows(batch, torch.nonzero(groups == group).flatten())
        n = len(rows["label"])
        parts = flops_breakdown(dims, dense_dim=dense, dnn_hidden=(16, 8), interaction=interaction,
                                cross_layers=layers)
        assert sum(parts.values()) == module.group_flops[group]                  # the figure flops.py reports
        matmuls = parts["dnn"] + parts["output"]
        if interaction == "fm":                                 # FM and its add into the logit: elementwise
            matmuls -= 1
        if interaction == "cross":                              # of 5 FLOPs per coordinate, the dot's 2
            matmuls += 0.4 * parts["interaction"]
        expected = matmuls + 2 * dense + module.router_flops_per_sample
        compact_per_sample.append(_matmul_flops(compact, rows) / n)
        assert compact_per_sample[-1] == pytest.approx(expected)
        padded_per_sample.append(_matmul_flops(module, rows) / n)
    # the zero-padded module multiplies the full width whatever the group: more than every compact group
    assert padded_per_sample[0] == pytest.approx(padded_per_sample[1]) == pytest.approx(padded_per_sample[2])
    assert all(c < p for c, p in zip(compact_per_sample, padded_per_sample))
