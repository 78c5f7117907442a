"""A user's own DeepCTR-Torch model seen from :class:`~ihas_lightning.callbacks.DimensionSearch`: where it is,
which fields it embeds, our :class:`~ihas_lightning.data.schema.Schema` for its feature columns, its
concatenated input ``X`` as our batch, and a :class:`~ihas_lightning.modules.SearchModule` holding its
weights (what the clustering stage reads)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ..backbones import BACKBONES, import_deepctr
from ..data.schema import MultiValuedField, Schema
from ..gates import InstanceGates

__all__ = ["LABEL", "batch_from_deepctr_input", "embedded_columns", "find_deepctr_model", "schema_from_columns",
           "searched_module_from"]

LABEL = "label"
"""The label column's name in the schema of an exported search (DeepCTR feature columns have no label)."""


def find_deepctr_model(pl_module: pl.LightningModule, attribute: str | None = None) -> nn.Module:
    """The DeepCTR-Torch ``BaseModel`` inside ``pl_module``: the one named ``attribute``, else the only one."""
    base = import_deepctr().models.basemodel.BaseModel
    if attribute is not None:
        model = getattr(pl_module, attribute, None)
        if not isinstance(model, base):
            raise ValueError(f"{type(pl_module).__name__}.{attribute} is not a deepctr_torch model "
                             f"(got {type(model).__name__})")
        return model
    found = [(name, m) for name, m in pl_module.named_modules() if isinstance(m, base)]
    if len(found) != 1:
        names = [name for name, _ in found]
        raise ValueError(f"{type(pl_module).__name__} holds {len(found)} deepctr_torch models {names}; "
                         "DimensionSearch needs exactly one, or model='<attribute>' to name it")
    return found[0][1]


def embedded_columns(columns: list) -> list:
    """The columns with an embedding, in the order ``input_from_feature_columns`` returns their embeddings:
    every ``SparseFeat``, then every ``VarLenSparseFeat``."""
    dc = import_deepctr()
    return ([c for c in columns if isinstance(c, dc.inputs.SparseFeat)]
            + [c for c in columns if isinstance(c, dc.inputs.VarLenSparseFeat)])


def schema_from_columns(columns: list) -> tuple[Schema, dict[str, int]]:
    """Our schema and vocabulary sizes for DeepCTR feature columns (each type's order kept, as the weights
    of the linear part and the DNN's first layer depend on it); refuses what our backbones cannot rebuild."""
    dc = import_deepctr()
    sparse, dense, multi, vocab = [], [], [], {}
    for column in columns:
        name = column.name
        if isinstance(column, dc.inputs.DenseFeat):
            if column.dimension != 1:
                raise ValueError(f"column '{name}': DenseFeat of dimension {column.dimension}; only 1 is supported")
            dense.append(name)
            continue
        feat = column.sparsefeat if isinstance(column, dc.inputs.VarLenSparseFeat) else column
        if feat.embedding_name != name or feat.use_hash:
            raise ValueError(f"column '{name}': a shared table (embedding_name={feat.embedding_name!r}) or "
                             "use_hash is not supported; every field needs its own table")
        vocab[name] = int(feat.vocabulary_size)
        if isinstance(column, dc.inputs.VarLenSparseFeat):
            if column.combiner != "mean" or column.length_name is not None:
                raise ValueError(f"column '{name}': only combiner='mean' without length_name is supported "
                                 f"(got combiner={column.combiner!r}, length_name={column.length_name!r})")
            multi.append(MultiValuedField(name, max_len=int(column.maxlen)))
        else:
            sparse.append(name)
    return Schema(label=LABEL, sparse=tuple(sparse), dense=tuple(dense), multivalued=tuple(multi)), vocab


def batch_from_deepctr_input(X: Tensor, feature_index: dict[str, tuple[int, int]], schema: Schema,
                             labels: Tensor | None = None) -> dict[str, Tensor]:
    """Our batch (``sparse``/``multi`` int64 ids, ``dense`` floats, ``label``) from DeepCTR's concatenated
    ``X`` (B, columns), sliced by the model's ``feature_index``: what an exported search's module takes."""
    def take(names: list[str]) -> Tensor:
        parts = [X[:, slice(*feature_index[n])] for n in names]
        return torch.cat(parts, dim=1) if parts else X.new_zeros((X.shape[0], 0))

    label = labels if labels is not None else X.new_zeros(X.shape[0])
    return {"sparse": take(list(schema.sparse)).long(), "dense": take(list(schema.dense)).float(),
            "multi": take([m.name for m in schema.multivalued]).long(), "label": label.reshape(-1).float()}


def _dnn_settings(model: nn.Module) -> dict[str, Any]:
    """The DNN widths and dropout of ``model`` (DeepCTR's ``DNN`` layer), where it has one."""
    dnn = getattr(model, "dnn", None)
    if dnn is None or not hasattr(dnn, "linears"):
        return {}
    return {"dnn_hidden_units": tuple(layer.out_features for layer in dnn.linears),
            "dnn_dropout": float(dnn.dropout.p)}


def searched_module_from(model: nn.Module, gates: InstanceGates, *, warmup_epochs: int, gate_lr: float, seed: int,
                         options: dict[str, Any] | None = None) -> Any:
    """A :class:`~ihas_lightning.modules.SearchModule` with ``model``'s weights and ``gates``' state.

    The backbone is rebuilt from ``model``'s class, feature columns, DNN widths/dropout and ``options`` (more
    constructor arguments, e.g. ``{"cross_num": 3}``), then ``model``'s ``state_dict`` is loaded strictly:
    an architecture our rebuild does not reproduce is an error naming the differing weights.
    """
    from ..modules import SearchModule

    name = type(model).__name__
    if name not in BACKBONES:
        raise ValueError(f"cannot export a searched {name}: the clustering stage rebuilds one of {BACKBONES}")
    linear = model.linear_model
    linear_names = [c.name for c in (*linear.sparse_feature_columns, *linear.varlen_sparse_feature_columns,
                                     *linear.dense_feature_columns)]
    dc = import_deepctr()
    kinds = (dc.inputs.SparseFeat, dc.inputs.VarLenSparseFeat, dc.inputs.DenseFeat)
    dnn_names = [c.name for kind in kinds for c in model.dnn_feature_columns if isinstance(c, kind)]
    if linear_names != dnn_names:
        raise ValueError(f"cannot export: the linear part's columns {linear_names} differ from the DNN's "
                         f"{dnn_names}; an exported search needs the same columns in both (as ihas builds them)")
    schema, vocab = schema_from_columns(model.dnn_feature_columns)
    search = SearchModule(schema, vocab, backbone=name, dim=gates.dim, warmup_epochs=warmup_epochs, gate_lr=gate_lr,
                          gate=asdict(gates.config), seed=seed, options=options, **_dnn_settings(model))
    if tuple(search.schema.embedded_fields) != tuple(c.name for c in embedded_columns(model.dnn_feature_columns)):
        raise ValueError("the rebuilt model orders its fields differently from the gates")
    try:
        search.backbone.model.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as error:
        raise ValueError(f"cannot export: {name} rebuilt with dnn settings {_dnn_settings(model)} and options "
                         f"{options or {}} does not match your model's weights; pass its other constructor "
                         f"arguments as options. {error}") from None
    search.gates.load_state_dict(gates.state_dict())
    return search.eval()
