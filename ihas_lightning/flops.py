"""One FLOP and size model for the served CTR models: a backbone at given dims, a retrained model, the router.

Below both ``supernet.py`` and ``pim/``: the baseline's and the retrained model's metrics, the supernet's
sub-architecture scores and the PIM cost model all count with the functions here.

Conventions: 1 multiply-add = 2 FLOPs; biases, activations, comparisons (a gate's threshold, an argmin) and
first-order (linear) logits are not counted. Parameters are counted as stored.

Policy for a backbone this model cannot count (anything but DeepFM, DCN with the vector cross network and
WDL): the counting functions raise ``NotImplementedError`` naming the backbone; every reported figure
(``IHASModel.flops_per_sample``, ``RetrainModule.flops_per_sample``, ``SubnetScore.flops_per_sample``,
``ModelCounts.flops_per_sample``) is then ``None``, written as JSON null and printed as "n/a"
(:func:`format_flops`). Parameter counts never depend on the backbone kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

if TYPE_CHECKING:                       # only for hints: the PIM cost model imports this module without DeepCTR
    from .backbones import CTRBackbone

__all__ = ["COUNTED_BACKBONES", "ModelCounts", "backbone_flops", "dense_params", "dnn_of", "expected_flops",
           "flops_breakdown", "flops_or_none", "format_flops", "group_flops", "is_embedding_table",
           "linear_router_flops", "router_flops", "stored_widths", "uniform_counts"]

COUNTED_BACKBONES = ("DeepFM", "DCN", "WDL")


def flops_breakdown(embedding_dims: Sequence[int], *, dense_dim: int = 0,
                    lookups_per_sample: Sequence[float] | None = None, dnn_hidden: Sequence[int] = (),
                    interaction: Literal["fm", "cross", "none"] = "fm", cross_layers: int = 0) -> dict[str, float]:
    """FLOPs per sample by stage of a served model (``pim.ModelSpec`` describes the same shape).

    pooling: sum of L rows of width D = (L-1)*D adds.  fm: 0.5*((sum v)^2 - sum v^2) over the active
    fields zero-padded to the widest, = D*(3F+1).  cross (DCN): 5*d per layer on d = concat_dim (dot 2d,
    scale d, bias d, residual d).  dnn: 2*sum(in*out).  output: 2*width of the final linear (+1 FM add).
    """
    dims = tuple(int(d) for d in embedding_dims)
    lookups = (1.0,) * len(dims) if lookups_per_sample is None else tuple(float(x) for x in lookups_per_sample)
    hidden = tuple(int(h) for h in dnn_hidden)
    act = tuple(i for i, d in enumerate(dims) if d > 0)
    concat_dim = dense_dim + sum(dims)                       # width of [dense | all embeddings]
    pooling = sum(max(lookups[i] - 1.0, 0.0) * dims[i] for i in act)
    fm = cross = 0.0
    if interaction == "fm" and act:
        d_max = max(dims[i] for i in act)
        fm = float(d_max * (3 * len(act) + 1))
    if interaction == "cross":
        cross = 5.0 * concat_dim * cross_layers
    widths = (concat_dim, *hidden)
    dnn = 2.0 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    final = hidden[-1] if hidden else 0
    final += concat_dim if interaction == "cross" else 0
    final = final or concat_dim  # no DNN and no cross: a linear layer on the concatenation
    output = 2.0 * final + (1.0 if interaction == "fm" else 0.0)
    return {"pooling": float(pooling), "interaction": fm + cross, "dnn": dnn, "output": output}


def dnn_of(backbone: CTRBackbone) -> nn.Module | None:
    """The DeepCTR-Torch ``DNN`` of ``backbone`` (``model.dnn``), or None for a model without one."""
    dnn = getattr(backbone.model, "dnn", None)
    if dnn is None or not hasattr(dnn, "linears") or len(dnn.linears) == 0:
        return None
    return dnn


def backbone_flops(backbone: CTRBackbone, dims: Sequence[int] | None = None,
                   widths: Sequence[int] | None = None) -> float:
    """FLOPs per sample of ``backbone`` run as a compact model at per-field ``dims`` and DNN ``widths``.

    Defaults: every field at ``backbone.dim``, the DNN at its built widths. The DNN's input is the effective
    width (sum of dims plus dense fields). Raises ``NotImplementedError`` outside :data:`COUNTED_BACKBONES`
    (and for DCN's matrix cross network).
    """
    model = backbone.model
    kind = type(model).__name__
    if kind == "DeepFM":
        interaction, cross = ("fm" if model.use_fm else "none"), 0
    elif kind == "DCN":
        if getattr(model.crossnet, "parameterization", "vector") != "vector":
            raise NotImplementedError("FLOPs are counted for DCN's vector cross network only")
        interaction, cross = "cross", int(model.cross_num)
    elif kind == "WDL":
        interaction, cross = "none", 0
    else:
        raise NotImplementedError(f"FLOPs are counted for {', '.join(COUNTED_BACKBONES)}, not {kind}")
    if dims is None:
        dims = (backbone.dim,) * len(backbone.fields)
    if widths is None:
        dnn = dnn_of(backbone)
        widths = tuple(int(layer.out_features) for layer in dnn.linears) if dnn is not None else ()
    if len(dims) != len(backbone.fields):
        raise ValueError(f"{len(dims)} dims for the backbone's {len(backbone.fields)} fields")
    multi = {m.name: float(m.max_len) for m in backbone.schema.multivalued}
    breakdown = flops_breakdown(dims, dense_dim=len(backbone.schema.dense),
                                lookups_per_sample=[multi.get(f, 1.0) for f in backbone.fields],
                                dnn_hidden=widths if getattr(model, "use_dnn", True) else (),
                                interaction=interaction, cross_layers=cross)
    return float(sum(breakdown.values()))


def group_flops(backbone: CTRBackbone, group_dims: Sequence[Sequence[int]], widths: Sequence[int]) -> list[float]:
    """FLOPs per sample of each group's compact model: group c at dims ``group_dims[c]``, the DNN at ``widths``."""
    return [backbone_flops(backbone, tuple(int(d) for d in dims), tuple(widths)) for dims in group_dims]


def router_flops(num_fields: int, dim: int, hidden: int, num_groups: int) -> float:
    """FLOPs per sample of the router: F*D mask coordinates, a gate network of ``hidden`` units, K centroids.

    ``2*F*D`` (BatchNorm with running statistics: one multiply-add per coordinate) + ``2*F*D*H + 2*H*F*D``
    (the gate network's two linear layers) + ``3*K*F*D`` (squared distance to each centroid: a subtraction and
    a multiply-add per coordinate). The gate threshold and the argmin are comparisons, not counted.
    """
    width = num_fields * dim
    return float(2 * width + 2 * width * hidden + 2 * hidden * width + 3 * num_groups * width)


def linear_router_flops(features: int, num_groups: int) -> float:
    """FLOPs per sample of a linear router: ``2*P*K`` for P input features and K groups (a multiply-add per
    weight; the bias takes the place of the first add). The argmax is comparisons, not counted."""
    return float(2 * features * num_groups)


def expected_flops(per_group: Sequence[float], group_share: Sequence[float], router: float) -> float:
    """FLOPs per sample of a routed model: ``sum_c share_c * flops_c + router`` (every sample is routed once)."""
    if len(per_group) != len(group_share):
        raise ValueError(f"{len(per_group)} groups but {len(group_share)} shares")
    return float(sum(s * f for s, f in zip(group_share, per_group))) + float(router)


def flops_or_none(count: Callable[[], float]) -> float | None:
    """``count()``, or None when the backbone is one this model cannot count (the reporting policy)."""
    try:
        return count()
    except NotImplementedError:
        return None


def format_flops(value: float | None) -> str:
    """A FLOPs figure for a table: ``12,345``, or ``n/a`` when not counted (None; NaN in older metrics files)."""
    if value is None or value != value:
        return "n/a"
    return f"{value:,.0f}"


def is_embedding_table(name: str) -> bool:
    """Whether parameter or buffer ``name`` belongs to an embedding table (``...embedding_dict...``)."""
    return ".embedding_dict." in f".{name}"


def dense_params(module: nn.Module) -> int:
    """Parameters of ``module`` outside its embedding tables (DNN, cross, FM, linear part, output layer)."""
    return int(sum(p.numel() for name, p in module.named_parameters() if not is_embedding_table(name)))


@dataclass(frozen=True)
class ModelCounts:
    """What a served model stores and computes per sample.

    Args:
        embedding_params: the fields' embedding tables as stored (first-order tables are not counted).
        router_params: every number routing reads at inference (0 for a model without a router).
        dense_params: the other parameters that execute (DNN, cross, FM, linear part, output).
        flops_per_sample: what executes per sample, router included; None when not counted.
        router_flops_per_sample: the router's share of it.
    """

    embedding_params: int
    router_params: int
    dense_params: int
    flops_per_sample: float | None
    router_flops_per_sample: float

    @property
    def footprint_params(self) -> int:
        """Embedding tables plus router: the figure the comparisons with uniform models use."""
        return self.embedding_params + self.router_params

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "footprint_params": self.footprint_params}


def stored_widths(backbone: CTRBackbone) -> tuple[int, ...]:
    """Each embedded field's table width as stored (``backbone.dim`` for all of them unless narrowed)."""
    return tuple(int(backbone.model.embedding_dict[f].embedding_dim) for f in backbone.fields)


def uniform_counts(backbone: CTRBackbone) -> ModelCounts:
    """Counts of a plain backbone served as stored, no router: its tables at their own widths (one uniform
    dimension, or per-field widths after ``narrow_tables``) and its FLOPs at those widths."""
    dims = stored_widths(backbone)
    return ModelCounts(embedding_params=backbone.embedding_params, router_params=0, dense_params=dense_params(backbone),
                       flops_per_sample=flops_or_none(lambda: backbone_flops(backbone, dims=dims)),
                       router_flops_per_sample=0.0)
