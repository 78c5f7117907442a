"""The FLOP and size model (``ihas_lightning/flops.py``): uniform backbones counted by hand, the policy for a
backbone it cannot count, and its place below both ``supernet.py`` and ``pim/``.

Tiny model: 3 sparse fields of vocabulary 10 at dimension 4, one dense field, DNN (8,).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ihas_lightning
from ihas_lightning.data.schema import Schema
from ihas_lightning.flops import (
    backbone_flops,
    expected_flops,
    flops_breakdown,
    format_flops,
    router_flops,
    uniform_counts,
)
from ihas_lightning.modules import BackboneModule
from ihas_lightning.pim import ModelSpec
from ihas_lightning.subarchitecture import SubArchitecture
from ihas_lightning.supernet import flops_per_sample

SCHEMA = Schema(label="y", sparse=("a", "b", "c"), dense=("x",))
VOCAB = {"a": 10, "b": 10, "c": 10}


def _backbone(name: str, **options):
    return BackboneModule(SCHEMA, VOCAB, backbone=name, dim=4, dnn_hidden_units=(8,), seed=0,
                          options=options or None).backbone


@pytest.mark.parametrize(("name", "options", "dense", "flops"), [
    # dense: linear part's dense weight 1 + output bias 1 + DNN 13*8 + 8 + its output layer
    # DeepFM: FM 4*(3*3 + 1) = 40, DNN 2*13*8 = 208 (input 3*4 + 1 dense), output 2*8 + 1 = 17
    ("DeepFM", {}, 1 + 1 + 112 + 8, 40 + 208 + 17),
    # WDL: DNN 208, output 2*8
    ("WDL", {}, 1 + 1 + 112 + 8, 208 + 16),
    # DCN, 2 cross layers: cross 5*13*2 = 130 (+ kernels and biases 2*13 each), DNN 208, output 2*(8 + 13)
    ("DCN", {"cross_num": 2}, 1 + 1 + 112 + 21 + 26 + 26, 130 + 208 + 42),
])
def test_uniform_backbone_counts_by_hand(name: str, options: dict, dense: int, flops: float) -> None:
    counts = uniform_counts(_backbone(name, **options))
    assert counts.embedding_params == 3 * 10 * 4 == 120                   # first-order tables not counted
    assert counts.dense_params == dense
    assert counts.router_params == 0 and counts.router_flops_per_sample == 0.0
    assert counts.footprint_params == 120
    assert counts.flops_per_sample == flops
    assert counts.to_dict()["footprint_params"] == 120


def test_narrower_dims_and_widths_by_hand() -> None:
    backbone = _backbone("DeepFM")
    # dims (4, 2, 0): FM over 2 active fields at d_max 4: 4*(3*2 + 1) = 28; DNN input 4+2+0+1 = 7 at width 5:
    # 2*7*5 = 70; output 2*5 + 1 = 11
    assert backbone_flops(backbone, (4, 2, 0), (5,)) == 28 + 70 + 11
    assert flops_per_sample(backbone, SubArchitecture(backbone.fields, (4, 2, 0), (5,))) == 109   # same model
    assert flops_per_sample(backbone) == backbone_flops(backbone) == 265
    with pytest.raises(ValueError, match="2 dims for the backbone's 3 fields"):
        backbone_flops(backbone, (4, 2), (8,))


def test_the_pim_model_spec_counts_with_the_same_model() -> None:
    spec = ModelSpec(embedding_dims=(4, 2, 0), vocab_sizes=(10, 10, 10), dense_dim=1, dnn_hidden=(5,),
                     interaction="fm", lookups_per_sample=(1.0, 3.0, 1.0))
    expected = flops_breakdown((4, 2, 0), dense_dim=1, dnn_hidden=(5,), interaction="fm",
                               lookups_per_sample=(1.0, 3.0, 1.0))
    assert spec.flops_breakdown() == expected == {"pooling": 2 * 2.0, "interaction": 28.0, "dnn": 70.0,
                                                  "output": 11.0}
    assert spec.flops_per_sample() == 113.0


def test_router_and_routed_model_formulas_by_hand() -> None:
    # F=3, D=4, hidden 5, K=2: BatchNorm 2*12, linears 2*12*5 + 2*5*12, distances 3*2*12
    assert router_flops(3, 4, 5, 2) == 24 + 120 + 120 + 72 == 336
    assert expected_flops([185.0, 95.0], [0.75, 0.25], 336.0) == 138.75 + 23.75 + 336
    with pytest.raises(ValueError, match="2 groups but 3 shares"):
        expected_flops([1.0, 2.0], [0.5, 0.25, 0.25], 0.0)


def test_an_uncounted_backbone_raises_in_counting_and_reports_none() -> None:
    backbone = _backbone("AutoInt")
    with pytest.raises(NotImplementedError, match="DeepFM, DCN, WDL, not AutoInt"):
        backbone_flops(backbone)
    counts = uniform_counts(backbone)
    assert counts.flops_per_sample is None and counts.embedding_params == 120
    assert format_flops(None) == format_flops(float("nan")) == "n/a"
    assert format_flops(12345.4) == "12,345"


def test_flops_sits_below_supernet_and_pim() -> None:
    """No import cycle: flops imports neither, supernet does not import pim (pim may import supernet)."""
    root = Path(ihas_lightning.__file__).parent

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        return names

    assert not {n for n in imported(root / "flops.py") if "supernet" in n or "pim" in n or "modules" in n}
    assert not {n for n in imported(root / "supernet.py") if "pim" in n}
