"""The routers: searched gates -> deterministic masks -> nearest centroid, and the linear router on every field's
first columns; their checkpoint keys, counts, fitting and the loading of older checkpoints.

Tiny model throughout: 3 fields, vocabulary 10, dimension 4, DNN (8,), gate network of 5 hidden units, K=2.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ihas_lightning.data.schema import Schema
from ihas_lightning.gates import GateConfig, InstanceGates
from ihas_lightning.model import IHASModel
from ihas_lightning.modules import LinearRouter, RetrainModule, Router, SearchModule
from ihas_lightning.modules.router import nearest_centroid

SCHEMA = Schema(label="y", sparse=("a", "b", "c"))
VOCAB = {"a": 10, "b": 10, "c": 10}
F, D, H = 3, 4, 5
GATE = {"hidden": H, "budget": 0.5}
GROUP_DIMS = [[4, 2, 2], [2, 2, 0]]        # stored widths: a 4, b 2, c 2

# The keys of a RetrainModule state_dict as the code before the Router wrote them (ihas_model.pt files and
# retraining checkpoints), in their order.
SAVED_KEYS = [
    "centroids", "group_dims", "group_masks",
    "backbone.model.embedding_dict.a.weight", "backbone.model.embedding_dict.b.weight",
    "backbone.model.embedding_dict.c.weight", "backbone.model.linear_model.embedding_dict.a.weight",
    "backbone.model.linear_model.embedding_dict.b.weight", "backbone.model.linear_model.embedding_dict.c.weight",
    "backbone.model.out.bias", "backbone.model.dnn.linears.0.weight", "backbone.model.dnn.linears.0.bias",
    "backbone.model.dnn_linear.weight",
    "gates.temperature", "gates.norm.running_mean", "gates.norm.running_var", "gates.norm.num_batches_tracked",
    "gates.hidden.weight", "gates.hidden.bias", "gates.out.weight", "gates.out.bias",
    "gates.controller.field_costs", "gates.controller.lam",
]


def _spread(gates: InstanceGates) -> InstanceGates:
    """Gate logits spread around p = 0.5 so that samples get masks of their own (a fresh network opens all)."""
    with torch.no_grad():
        torch.nn.init.normal_(gates.out.weight, std=0.5)
        gates.out.bias.fill_(float(gates.temperature) * math.log(0.1 / 1.1))
        gates.norm.running_mean.normal_(0.0, 0.1)
        gates.norm.running_var.fill_(0.09)
    return gates


def _module(seed: int = 0, centroids: torch.Tensor | None = None) -> RetrainModule:
    torch.manual_seed(seed)
    centroids = torch.rand(2, F * D) if centroids is None else centroids
    module = RetrainModule(SCHEMA, VOCAB, group_dims=GROUP_DIMS, centroids=centroids.tolist(), gate=GATE, dim=D,
                           dnn_hidden_units=(8,), seed=seed)
    _spread(module.gates)
    return module


def _embeddings(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, F, D, generator=torch.Generator().manual_seed(seed))                 # (B, F, D)


def _hand_route(masks: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest centroid by the definition: smallest squared distance, ties to the lowest index."""
    d2 = ((masks[:, None, :].double() - centroids[None].double()) ** 2).sum(-1)              # (B, K)
    return torch.tensor([min(range(len(centroids)), key=lambda k: (row[k].item(), k)) for row in d2])


# -- routing ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_router_routes_as_the_retraining_did_ties_included() -> None:
    gates = _spread(InstanceGates(F, D, GateConfig(**GATE)).eval())
    e = _embeddings()
    masks = gates.deterministic_mask(e).flatten(1)                                           # (B, F*D)
    assert masks.unique(dim=0).shape[0] >= 8                                                # varied masks
    # float centroids (k-means): exactly the retraining's former rule, cdist then argmin
    floats = torch.rand(3, F * D, generator=torch.Generator().manual_seed(2))
    router = Router(gates, floats)
    assert torch.equal(router(e), torch.cdist(masks, floats).argmin(dim=1))
    assert torch.equal(router(e), _hand_route(masks, floats))
    # duplicated and binary centroids: exact ties go to the lowest index
    binary = torch.stack([masks[0], masks[0], masks[1], 1.0 - masks[1]])                   # (4, F*D)
    groups = Router(gates, binary)(e)
    assert torch.equal(groups, _hand_route(masks, binary))
    assert torch.equal(groups, torch.cdist(masks, binary).argmin(dim=1))
    assert groups[0] == 0 and (groups != 1).all()                                           # group 1 only ties 0
    assert torch.equal(nearest_centroid(masks, binary), groups)


@torch.no_grad()
def test_retrain_module_routes_through_its_router_in_any_mode() -> None:
    module = _module().train()
    e = _embeddings()
    masks = module.gates.eval().deterministic_mask(e).flatten(1)
    module.gates.train()
    assert torch.equal(module.route(e), _hand_route(masks, module.centroids))
    assert module.gates.training and module.router.gates is module.gates                    # mode left as found
    assert not any(p.requires_grad for p in module.router.parameters())                     # frozen


@torch.no_grad()
def test_from_search_copies_the_search_gates_and_routes_on_the_searched_tables() -> None:
    torch.manual_seed(0)
    search = SearchModule(SCHEMA, VOCAB, dim=D, dnn_hidden_units=(8,), gate=GATE, seed=0).eval()
    _spread(search.gates)
    centroids = torch.rand(2, F * D, generator=torch.Generator().manual_seed(3))
    router = Router.from_search(search, centroids)
    ids = torch.stack([torch.arange(10), (torch.arange(10) * 3) % 10, (torch.arange(10) * 7) % 10], dim=1)
    batch = {"sparse": ids, "dense": torch.zeros(10, 0), "multi": torch.zeros(10, 0, dtype=torch.long)}
    e = search.backbone.field_embeddings(batch)
    masks = search.gates.deterministic_mask(e).flatten(1)                                    # the pipeline's rule
    assert torch.equal(router(e), torch.cdist(masks, centroids).argmin(dim=1))
    assert router.gates is not search.gates and all(p.requires_grad for p in search.gates.parameters())


def test_router_checks_the_centroids_shape() -> None:
    with pytest.raises(ValueError, match=r"centroids must be \(K, 12\) for 3 fields of dimension 4, got \(2, 10\)"):
        Router(InstanceGates(F, D, GateConfig(**GATE)), torch.zeros(2, 10))


# -- checkpoint keys -------------------------------------------------------------------------------------

def test_state_dict_keeps_the_keys_checkpoints_have_always_had(tmp_path: Path) -> None:
    module = _module(seed=0)
    state = module.state_dict()
    assert list(state) == SAVED_KEYS
    assert torch.equal(state["centroids"], module.router.centroids)
    assert torch.equal(state["gates.out.weight"], module.router.gates.out.weight)
    # a file with these keys (any file written before the Router) loads strictly, weights and routes included
    other = _module(seed=5)
    other.load_state_dict(torch.load(_saved(tmp_path, state), weights_only=False))
    e = _embeddings()
    assert torch.equal(other.centroids, module.centroids)
    assert torch.equal(other.route(e), module.route(e))
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), state.values()))
    # wrapped (IHASModel's state_dict): the prefix is kept
    assert [k for k in IHASModel(module).state_dict() if "gates.out" in k or "centroids" in k] == \
        ["module.centroids", "module.gates.out.weight", "module.gates.out.bias"]


def _saved(tmp_path: Path, state: dict) -> Path:
    path = tmp_path / "state.pt"
    torch.save({k: v.clone() for k, v in state.items()}, path)
    return path


def test_warm_start_still_takes_the_search_gates() -> None:
    torch.manual_seed(0)
    search = SearchModule(SCHEMA, VOCAB, dim=D, dnn_hidden_units=(8,), gate=GATE, seed=3)
    _spread(search.gates)
    module = _module(seed=1)
    module.warm_start(search.state_dict())
    for key, value in search.gates.state_dict().items():
        assert torch.equal(module.gates.state_dict()[key], value), key


# -- counts ----------------------------------------------------------------------------------------------

def test_router_counts_by_hand() -> None:
    module = _module()
    # gate network: hidden 12*5 + 5 = 65, out 5*12 + 12 = 72, BatchNorm mean + var 12 + 12 = 24,
    # temperature 1; centroids 2*12 = 24  ->  186
    assert module.router.num_params == module.router_params == 65 + 72 + 24 + 1 + 24 == 186
    gaussian = Router(InstanceGates(F, D, GateConfig(**GATE, relaxation="gaussian")), torch.zeros(2, 12))
    assert gaussian.num_params == 185                                                        # no temperature
    # BatchNorm 2*12 + linear layers 2*12*5 + 2*5*12 + distances 3*2*12  ->  336
    assert module.router.flops_per_sample == module.router_flops_per_sample == 24 + 120 + 120 + 72 == 336


def test_retrained_model_counts_by_hand() -> None:
    module = _module()
    # tables stored at the widest group: a 4, b 2, c 2 columns of 10 rows
    assert module.embedding_params == 10 * (4 + 2 + 2) == 80
    # DNN 12 -> 8 (96 weights + 8 biases), its output 8 -> 1, the model's output bias
    assert module.dense_params == 12 * 8 + 8 + 8 + 1 == 113
    assert module.footprint_params == 80 + 186 == 266
    # DeepFM group FLOPs: FM d_max*(3F+1), DNN 2*sum(d)*8, output 2*8 + 1
    #   group 0 (4, 2, 2): 4*10 + 2*8*8 + 17 = 185;  group 1 (2, 2, 0): 2*7 + 2*4*8 + 17 = 95
    assert module.group_flops == [185.0, 95.0]
    assert module.flops_per_sample == 0.5 * 185 + 0.5 * 95 + 336 == 476.0
    model = IHASModel(module, group_share=[0.75, 0.25])
    assert model.flops_per_sample == 0.75 * 185 + 0.25 * 95 + 336 == 498.5
    assert model.router_flops_per_sample == 336.0
    assert (model.embedding_params, model.router_params, model.footprint_params, model.dense_params) == \
        (80, 186, 266, 113)
    assert model.counts.to_dict() == {"embedding_params": 80, "router_params": 186, "dense_params": 113,
                                      "flops_per_sample": 498.5, "router_flops_per_sample": 336.0,
                                      "footprint_params": 266}


def test_an_uncounted_backbone_reports_none() -> None:
    torch.manual_seed(0)
    module = RetrainModule(SCHEMA, VOCAB, group_dims=GROUP_DIMS, centroids=torch.rand(2, 12).tolist(), gate=GATE,
                           backbone="AutoInt", dim=D, dnn_hidden_units=(8,), seed=0)
    with pytest.raises(NotImplementedError, match="not AutoInt"):
        module.group_flops
    model = IHASModel(module)
    assert model.flops_per_sample is None and model.counts.flops_per_sample is None
    assert model.router_flops_per_sample == 336.0 and model.router_params == 186           # still counted


# -- the linear router -----------------------------------------------------------------------------------

def _linear_module(seed: int = 0) -> RetrainModule:
    torch.manual_seed(seed)
    return RetrainModule(SCHEMA, VOCAB, group_dims=GROUP_DIMS, centroids=torch.rand(2, F * D).tolist(), gate=GATE,
                         dim=D, dnn_hidden_units=(8,), seed=seed, router="linear")


def _planted(n: int, seed: int, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, F, D) embeddings whose group (n,) is set by the first 2 columns of every field (K well-apart
    centres there), the other columns pure noise ten times larger."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, k, (n,), generator=g)
    centres = torch.randn(k, F, 2, generator=torch.Generator().manual_seed(99)) * 3.0            # (K, F, 2)
    e = 10.0 * torch.randn(n, F, D, generator=g)
    e[:, :, :2] = centres[groups] + 0.3 * torch.randn(n, F, 2, generator=g)
    return e, groups


def test_linear_router_counts_by_hand() -> None:
    module = _linear_module()
    # min_dim 2 (GateConfig's default) columns of 3 fields -> 6 features; K = 2: 6*2 weights + 2 biases
    assert module.hparams.router == "linear" and module.hparams.router_columns == 2
    assert module.router.num_params == module.router_params == 6 * 2 + 2 == 14
    # 2 groups x 6 multiply-adds
    assert module.router.flops_per_sample == module.router_flops_per_sample == 2 * 6 * 2 == 24
    assert module.footprint_params == 80 + 14 == 94                 # tables as in the gate router's hand count
    assert module.flops_per_sample == 0.5 * 185 + 0.5 * 95 + 24 == 164.0
    assert IHASModel(module, group_share=[0.75, 0.25]).counts.to_dict() == {
        "embedding_params": 80, "router_params": 14, "dense_params": 113, "flops_per_sample": 0.75 * 185 + 0.25 * 95
        + 24, "router_flops_per_sample": 24.0, "footprint_params": 94}
    assert LinearRouter(num_fields=26, columns=2, num_groups=4).num_params == 26 * 2 * 4 + 4 == 212


@torch.no_grad()
def test_linear_router_routes_by_its_affine_map_of_the_first_columns() -> None:
    router = LinearRouter(F, 2, 3)
    router.weight.copy_(torch.randn(3, F * 2, generator=torch.Generator().manual_seed(4)))
    router.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    e = _embeddings()
    hand = (e[:, :, :2].reshape(len(e), -1) @ router.weight.T + router.bias).argmax(1)
    assert torch.equal(router(e), hand)
    e2 = e.clone()
    e2[:, :, 2:] = 100.0                                            # columns it does not read
    assert torch.equal(router(e2), hand)
    with pytest.raises(ValueError, match=r"expected \(B, 3, >= 2\) embeddings, got \(4, 2, 4\)"):
        router(torch.zeros(4, 2, 4))


def test_linear_router_recovers_a_planted_routing_exactly() -> None:
    e, groups = _planted(600, seed=0)
    router = LinearRouter(F, 2, 3)
    assert router.fit(router.features(e), groups, seed=0) == 1.0                             # training rows
    held_out, held_groups = _planted(400, seed=1)
    assert float((router(held_out) == held_groups).float().mean()) == 1.0                    # new rows


def test_linear_router_fit_is_deterministic_and_seeded() -> None:
    e, groups = _planted(300, seed=2)
    a, b, c = LinearRouter(F, 2, 3), LinearRouter(F, 2, 3), LinearRouter(F, 2, 3)
    a.fit(a.features(e), groups, seed=5)
    b.fit(b.features(e), groups, seed=5)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.weight.abs().sum() > 0
    with pytest.raises(ValueError, match=r"groups must lie in \[0, 3\), got 3..3"):
        c.fit(c.features(e), torch.full((300,), 3), seed=0)


def test_linear_router_round_trips_through_an_ihas_model_file(tmp_path: Path) -> None:
    module = _linear_module(seed=0)
    e, _ = _planted(200, seed=3, k=2)
    module.router.fit(module.router.features(e), (e[:, 0, 0] > 0).long(), seed=0)
    assert sorted(k for k in module.state_dict() if "router" in k or "gates" in k or "centroids" in k) == \
        ["router.bias", "router.weight"]
    IHASModel(module).save(tmp_path / "ihas_model.pt")
    loaded = IHASModel.load(tmp_path / "ihas_model.pt").module
    assert isinstance(loaded.router, LinearRouter) and loaded.router_params == 14
    assert torch.equal(loaded.route(e), module.route(e)) and len(module.route(e).unique()) == 2
    with pytest.raises(ValueError, match="'linear' router has no gate network"):
        loaded.gates


def test_a_checkpoint_without_a_router_kind_loads_as_the_gate_router(tmp_path: Path) -> None:
    module = _module(seed=0)
    hparams = dict(module.hparams)
    del hparams["router"], hparams["router_columns"]                # as written before the choice existed
    torch.save({"hparams": hparams, "state_dict": module.state_dict(), "encoder": None, "group_share": [0.5, 0.5],
                "format": "ihas-model/1"}, tmp_path / "old.pt")
    loaded = IHASModel.load(tmp_path / "old.pt").module
    assert isinstance(loaded.router, Router) and loaded.hparams.router == "gates"
    assert list(loaded.state_dict()) == SAVED_KEYS
    e = _embeddings()
    assert torch.equal(loaded.route(e), module.route(e)) and loaded.router_params == 186
    with pytest.raises(ValueError, match=r"router must be one of \('gates', 'linear'\), got 'tree'"):
        RetrainModule(SCHEMA, VOCAB, group_dims=GROUP_DIMS, centroids=torch.rand(2, 12).tolist(), router="tree")
