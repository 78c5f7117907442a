"""Adapters that feed DeepCTR-Torch models int64 ids and let us rewrite their embeddings on the way in.

Every DeepCTR-Torch model built on ``BaseModel`` takes all of its field embeddings from one call of
``input_from_feature_columns`` and its first-order term from ``linear_model``. :class:`CTRBackbone`
replaces both *on the instance* (no fork of the library): ids are looked up exactly as int64 (the
library's float32 ``X`` loses ids above 2**24), the (B, F, D) embeddings pass through an optional
``embedding_transform`` (Bernoulli gates, supernet masks, per-group dimensions), and the result reaches
every branch of the model (FM, cross network, CIN, attention, DNN).

Tables narrower than ``dim`` (per-field dimensions after the search) are zero-padded to ``dim``: exact for
FM inner products and for every linear layer, so models that need equal dimensions keep working.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch_checks import check_batch
from .cross_network import use_fast_cross_network
from .data.schema import Schema

__all__ = ["BACKBONES", "UNSUPPORTED_BACKBONES", "CTRBackbone", "build_backbone", "check_backbone_name",
           "feature_columns", "mean_pooled", "narrow_tables", "import_deepctr", "width_multiple"]

EmbeddingTransform = Callable[[Tensor], Tensor]


def import_deepctr() -> types.ModuleType:
    """Import deepctr_torch without its import-time thread that asks PyPI for a newer version.

    That thread prints to stdout on offline machines and touches the network in every worker process;
    set ``IHAS_DEEPCTR_VERSION_CHECK=1`` to keep it.
    """
    if "deepctr_torch" not in sys.modules and os.environ.get("IHAS_DEEPCTR_VERSION_CHECK") != "1":
        stub = types.ModuleType("deepctr_torch.utils")
        stub.check_version = lambda version: None
        sys.modules["deepctr_torch.utils"] = stub
    import deepctr_torch
    import deepctr_torch.models

    return deepctr_torch


# Models whose forward reads embeddings only through input_from_feature_columns and linear_model.
BACKBONES = ("DeepFM", "DCN", "DCNMix", "WDL", "xDeepFM", "AutoInt", "NFM", "PNN", "AFM", "AFN", "IFM", "DIFM",
             "FiBiNET", "CCPM")
_SPARSE_ONLY = ("AFM", "CCPM")
UNSUPPORTED_BACKBONES = {
    "ONN": "builds its own field-aware embedding tables for every field pair and reads X directly",
    "DIN": "needs user-behavior sequence features and reads them from X directly",
    "DIEN": "needs user-behavior sequence features and reads them from X directly",
    "MLR": "takes region/base/bias feature columns, not linear and DNN feature columns",
}


def check_backbone_name(name: str, refusal: str = "is not supported") -> None:
    """``name`` must be one of :data:`BACKBONES`; an unsupported model's error gives the reason after
    ``refusal`` (e.g. ``"cannot be a transfer target"``), an unknown one's lists the choices."""
    if name in UNSUPPORTED_BACKBONES:
        raise ValueError(f"backbone '{name}' {refusal}: it {UNSUPPORTED_BACKBONES[name]}")
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")


_ATTENTION_HEADS = {"AutoInt": 2, "DIFM": 4}
"""DeepCTR-Torch's default ``att_head_num`` of the backbones whose self-attention splits the embedding into heads."""


def width_multiple(name: str, options: dict | None = None) -> int:
    """The number a backbone's common embedding width must be a multiple of: AutoInt's and DIFM's self-attention
    split it into ``att_head_num`` heads (DeepCTR-Torch's defaults 2 and 4); every other backbone takes any width."""
    if name not in _ATTENTION_HEADS:
        return 1
    return int((options or {}).get("att_head_num", _ATTENTION_HEADS[name]))


def mean_pooled(table: nn.Embedding, ids: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, d)`` mean of the rows of ``table`` for the ``(B, L)`` ``ids``, padding id 0 left out (a row of
    padding only gives 0): DeepCTR-Torch's ``combiner="mean"``, with the mask in ``dtype``."""
    present = (ids != 0).unsqueeze(-1).to(dtype)                                               # (B, L, 1)
    return (table(ids) * present).sum(1) / present.sum(1).clamp_min(1.0)                       # (B, d)


def feature_columns(schema: Schema, vocab_sizes: dict[str, int], dim: int) -> list:
    """DeepCTR-Torch feature columns for ``schema``: sparse, multi-valued (mean-pooled), then dense."""
    dc = import_deepctr()
    missing = [f for f in schema.embedded_fields if f not in vocab_sizes]
    if missing:
        raise ValueError(f"vocab_sizes has no entry for fields {missing}")
    columns: list = [dc.inputs.SparseFeat(name, vocab_sizes[name], embedding_dim=dim, dtype="int64")
                     for name in schema.sparse]
    columns += [dc.inputs.VarLenSparseFeat(
        dc.inputs.SparseFeat(m.name, vocab_sizes[m.name], embedding_dim=dim, dtype="int64"),
        maxlen=m.max_len, combiner="mean") for m in schema.multivalued]
    columns += [dc.inputs.DenseFeat(name, 1) for name in schema.dense]
    return columns


def build_backbone(name: str, schema: Schema, vocab_sizes: dict[str, int], dim: int = 16, *,
                   dnn_hidden_units: Sequence[int] = (256, 128), seed: int = 1024, dnn_dropout: float = 0.0,
                   l2_reg_embedding: float = 1e-5, options: dict | None = None,
                   embedding_updates: str = "dense") -> CTRBackbone:
    """A DeepCTR-Torch model ``name`` with every field at ``dim``, wrapped as a :class:`CTRBackbone`.

    ``options`` go to the model's constructor (e.g. ``{"cross_num": 3}`` for DCN). ``embedding_updates``:
    ``"rowwise"`` makes the tables give sparse gradients (train them with
    :class:`~ihas_lightning.modules.rowwise.RowwiseAdam`, as our modules do); ``"dense"`` (the default here,
    for a backbone handed to an optimiser of your own) keeps DeepCTR-Torch's dense ones.
    """
    if embedding_updates not in ("rowwise", "dense"):
        raise ValueError(f"embedding_updates must be 'rowwise' or 'dense', got {embedding_updates!r}")
    check_backbone_name(name)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    multiple = width_multiple(name, options)
    if dim % multiple:
        lower, upper = dim // multiple * multiple, (dim // multiple + 1) * multiple
        choices = f"{lower} or {upper}" if lower else str(upper)
        raise ValueError(f"{name} splits the embedding dimension into att_head_num={multiple} attention heads, so the "
                         f"dimension must be a multiple of {multiple}, got {dim}: choose {choices}, or another "
                         "att_head_num in the backbone's options")
    model_class = getattr(import_deepctr().models, name)
    columns = feature_columns(schema, vocab_sizes, dim)
    accepted = inspect.signature(model_class.__init__).parameters
    kwargs = {"dnn_hidden_units": tuple(dnn_hidden_units), "seed": seed, "dnn_dropout": dnn_dropout,
              "l2_reg_embedding": l2_reg_embedding, "task": "binary", "device": "cpu", **(options or {})}
    if name == "CCPM":  # its two default conv kernels (6, 5) need at least 6 fields
        kwargs.setdefault("conv_kernel_width", tuple(min(w, len(schema.embedded_fields)) for w in (6, 5)))
    unknown = sorted(set(options or {}) - set(accepted))
    if unknown:
        raise ValueError(f"{name} does not take options {unknown}")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    if "linear_feature_columns" in accepted:
        # AFM and CCPM take no dense fields in their DNN side; dense fields then enter the linear part only.
        dnn_columns = [c for c in columns if type(c).__name__ != "DenseFeat"] if name in _SPARSE_ONLY else columns
        model = model_class(columns, dnn_columns, **kwargs)
    else:
        model = model_class(columns, **kwargs)
    backbone = CTRBackbone(model, schema)
    backbone.sparse_tables = embedding_updates == "rowwise"
    return backbone


class CTRBackbone(nn.Module):
    """A DeepCTR-Torch model that takes :data:`~ihas_lightning.data.loader.Batch` dicts and returns logits.

    Wrap your own instance with ``CTRBackbone(model, schema)``: its feature-column names must be the
    schema's fields. Set ``embedding_transform`` to rewrite the (B, F, D) embeddings of every forward.

    Example:
        >>> backbone = CTRBackbone(DeepFM(cols, cols), schema)
        >>> logits = backbone(batch)               # (B,)
    """

    def __init__(self, model: nn.Module, schema: Schema) -> None:
        super().__init__()
        dc = import_deepctr()
        if not isinstance(model, dc.models.basemodel.BaseModel):
            raise TypeError(f"expected a deepctr_torch BaseModel, got {type(model).__name__}")
        tables = set(model.embedding_dict.keys())
        missing = [f for f in schema.embedded_fields if f not in tables]
        if missing:
            raise ValueError(f"the model has no embedding tables for schema fields {missing}; it has {sorted(tables)}")
        self.model = model
        self.schema = schema
        self.fields = schema.embedded_fields
        self.dim = int(max(model.embedding_dict[f].embedding_dim for f in self.fields))
        self.embedding_transform: EmbeddingTransform | None = None
        self._multi_slices = _multi_slices(schema)
        # What an id outside [0, vocabulary size) does: "error" (default) or "oov" (mapped to the OOV id 1).
        self.out_of_range = "error"
        self._batch: dict[str, Tensor] | None = None
        # The batches of the training forwards since the last regularization_loss: the rows a row-wise L1 covers.
        self._trained_batches: list[dict[str, Tensor]] = []
        self.last_embeddings: Tensor | None = None
        # Logits instead of probabilities (mixed precision, BCE-with-logits); the bias is kept.
        bias = getattr(model.out, "bias", None)
        model.out = dc.layers.PredictionLayer(task="regression", use_bias=bias is not None)
        if bias is not None:
            model.out.bias = bias
        model.input_from_feature_columns = self._input_from_feature_columns
        model.linear_model.forward = self._linear_forward
        use_fast_cross_network(model)

    def tables(self) -> list[nn.Embedding]:
        """Every embedding table: the fields' and the first-order (linear) part's."""
        return [*self.model.embedding_dict.values(), *self.model.linear_model.embedding_dict.values()]

    @property
    def sparse_tables(self) -> bool:
        """Whether the tables give sparse gradients (row-wise updates); set it to switch every table."""
        return all(table.sparse for table in self.tables())

    @sparse_tables.setter
    def sparse_tables(self, sparse: bool) -> None:
        for table in self.tables():
            table.sparse = bool(sparse)

    @property
    def embedding_params(self) -> int:
        """Parameters of the fields' embedding tables (each stored table counted once)."""
        return int(sum(self.model.embedding_dict[f].weight.numel() for f in self.fields))

    def regularization_loss(self, replace: Callable[[Tensor], Sequence[Tensor]] | None = None) -> Tensor:
        """DeepCTR-Torch's L1/L2 terms, which its own ``fit`` adds to the loss, less the L2 of row-wise tables.

        Same sums as ``BaseModel.get_regularization_loss``, which allocates its accumulator on the device
        named at construction and so fails once the model has moved to a GPU. ``replace`` maps a regularized
        parameter to the tensors regularized in its place (per-group copies of the dense layers trained
        instead of it); by default each parameter stands for itself.

        The L2 of a table with sparse gradients (row-wise updates) is not here but in the optimiser
        (:meth:`row_l2`: our modules' :class:`~ihas_lightning.modules.rowwise.RowwiseAdam` adds
        ``2 * l2 / B * w`` to each row the step updates, once): the whole-table term's gradient on those rows
        and none elsewhere, so the step stays row-wise, without a lookup, norm and sparse gradient per table
        in the graph. An L1 term on such a table covers the rows the training forwards since the last call
        looked up, each once.
        """
        total = self.model.out.bias.new_zeros(()) if hasattr(self.model.out, "bias") else torch.zeros(())
        sparse = self._row_wise_weight_ids()
        rows = self._touched_rows() if any(l1 > 0 for _, l1, _ in self.model.regularization_weight) else {}
        self._trained_batches = []
        for params, l1, l2 in self.model.regularization_weight:
            for weight in (w for entry in params for w in (replace or _itself)(_parameter(entry))):
                if l1 > 0:
                    looked_up = F.embedding(rows[id(weight)], weight, sparse=True) if id(weight) in rows else weight
                    total = total + l1 * looked_up.abs().sum()
                if l2 > 0 and id(weight) not in sparse:  # ||w||^2 as a reduction: no full-size temporaries
                    total = total + l2 * torch.linalg.vector_norm(weight).square()
        return total

    def row_l2(self) -> dict[Tensor, float]:
        """DeepCTR-Torch's L2 coefficient of every row-wise (sparse-gradient) table weight, summed over its
        regularization entries: the optimiser applies these to the rows each step updates."""
        sparse = self._row_wise_weight_ids()
        out: dict[Tensor, float] = {}
        for params, _, l2 in self.model.regularization_weight:
            for weight in map(_parameter, params):
                if l2 > 0 and id(weight) in sparse:
                    out[weight] = out.get(weight, 0.0) + float(l2)
        return out

    def _row_wise_weight_ids(self) -> set[int]:
        return {id(table.weight) for table in self.tables() if table.sparse}

    def forget_trained_rows(self) -> None:
        """Start a new training step: the row-wise L1 forgets the rows of earlier forwards."""
        self._trained_batches = []

    def _touched_rows(self) -> dict[int, Tensor]:
        """``id(table weight) -> unique row ids`` the recorded training batches looked up, for sparse tables
        (padding id 0 of a multi-valued field is not a lookup)."""
        if not self._trained_batches:
            return {}
        linear = self.model.linear_model.embedding_dict

        def tables(name: str) -> list[nn.Embedding]:                 # PNN, AFN, ...: no first-order tables
            return [t for t in (self.model.embedding_dict[name], linear[name] if name in linear else None)
                    if t is not None and t.sparse]

        rows: dict[int, Tensor] = {}
        for index, name in enumerate(self.schema.sparse):
            ids = torch.cat([b["sparse"][:, index] for b in self._trained_batches]).unique()
            rows.update({id(t.weight): ids for t in tables(name)})
        for name, (start, stop) in self._multi_slices.items():
            ids = torch.cat([b["multi"][:, start:stop].reshape(-1) for b in self._trained_batches]).unique()
            rows.update({id(t.weight): ids[ids != 0] for t in tables(name)})
        return rows

    def field_embeddings(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, F, D) embeddings of the embedded fields, narrow tables zero-padded to ``dim``."""
        sparse, multi = batch["sparse"], batch["multi"]
        out = []
        for index, name in enumerate(self.schema.sparse):
            out.append(self._pad(self.model.embedding_dict[name](sparse[:, index])))             # (B, d_f)
        for name, (start, stop) in self._multi_slices.items():
            table = self.model.embedding_dict[name]
            out.append(self._pad(mean_pooled(table, multi[:, start:stop], table.weight.dtype)))  # (B, d_f)
        return torch.stack(out, dim=1)                                                         # (B, F, D)

    def check_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch, checked against the schema and the tables (:func:`~ihas_lightning.batch_checks.check_batch`):
        errors name the column, value and limit; with ``out_of_range = "oov"`` ids outside ``[0, V)`` become the
        OOV id (1)."""
        sizes = {name: table.num_embeddings for name, table in self.model.embedding_dict.items()}
        return check_batch(batch, self.schema, sizes, self.out_of_range)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        if self.out_of_range not in ("error", "oov"):
            raise ValueError(f"out_of_range must be 'error' or 'oov', got {self.out_of_range!r}")
        batch = self.check_batch(batch)
        self._batch = batch
        if self.training and torch.is_grad_enabled() and any(t.sparse for t in self.tables()):
            self._trained_batches.append(batch)
        try:
            logits = self.model(self._deepctr_input(batch))
        finally:
            self._batch = None
        return logits.reshape(-1)                                                              # (B,)

    def _pad(self, embedding: Tensor) -> Tensor:
        width = embedding.shape[-1]
        return embedding if width == self.dim else F.pad(embedding, (0, self.dim - width))

    def _deepctr_input(self, batch: dict[str, Tensor]) -> Tensor:
        """The library's own (B, columns) float input, for code paths that read ``X`` for shapes only."""
        index = self.model.feature_index
        X = batch["dense"].new_zeros((batch["label"].shape[0] if "label" in batch else batch["sparse"].shape[0],
                                      max(stop for _, stop in index.values())))
        for position, name in enumerate(self.schema.dense):
            start, _ = index[name]
            X[:, start] = batch["dense"][:, position]
        return X

    def _input_from_feature_columns(self, X: Tensor, feature_columns: list, embedding_dict: nn.ModuleDict,
                                    support_dense: bool = True) -> tuple[list[Tensor], list[Tensor]]:
        if self._batch is None:
            raise RuntimeError("CTRBackbone: call the wrapper (backbone(batch)), not the inner model")
        if embedding_dict is not self.model.embedding_dict:
            raise RuntimeError("this model looks embeddings up in a table dict of its own; it is not supported")
        embeddings = self.field_embeddings(self._batch)                                       # (B, F, D)
        if self.embedding_transform is not None:
            embeddings = self.embedding_transform(embeddings)
        self.last_embeddings = embeddings
        wanted = {getattr(c, "name", None) for c in feature_columns}
        # split, not a slice per field: a slice's backward writes a zero (B, F, D) gradient for every field (F
        # times the embeddings' size a step); split's backward is one concatenation.
        pieces = embeddings.split(1, dim=1)                                                   # F x (B, 1, D)
        sparse_list = [pieces[i] for i, f in enumerate(self.fields) if f in wanted]
        dense_names = [c.name for c in feature_columns if type(c).__name__ == "DenseFeat"]
        if dense_names and not support_dense:
            raise ValueError("DenseFeat is not supported in dnn_feature_columns")
        dense_list = [self._batch["dense"][:, self.schema.dense.index(n)].unsqueeze(1) for n in dense_names]
        return sparse_list, dense_list

    def _linear_forward(self, X: Tensor, sparse_feat_refine_weight: Tensor | None = None) -> Tensor:
        batch = self._batch
        linear = self.model.linear_model
        weights = [linear.embedding_dict[name](batch["sparse"][:, i]) for i, name in enumerate(self.schema.sparse)]
        for name, (start, stop) in self._multi_slices.items():
            weights.append(mean_pooled(linear.embedding_dict[name], batch["multi"][:, start:stop], X.dtype))  # (B, 1)
        logit = X.new_zeros((X.shape[0], 1))
        if weights:
            stacked = torch.cat(weights, dim=-1)                                              # (B, F)
            if sparse_feat_refine_weight is not None:
                stacked = stacked * sparse_feat_refine_weight
            logit = logit + stacked.sum(-1, keepdim=True)
        if self.schema.dense and hasattr(linear, "weight"):
            logit = logit + batch["dense"].matmul(linear.weight)
        return logit


def _multi_slices(schema: Schema) -> dict[str, tuple[int, int]]:
    slices, start = {}, 0
    for field in schema.multivalued:
        slices[field.name] = (start, start + field.max_len)
        start += field.max_len
    return slices


def narrow_tables(backbone: CTRBackbone, widths: dict[str, int]) -> None:
    """Store field ``f``'s table at ``widths[f]`` columns, keeping its first columns (the shared-table layout
    of the retraining stage: group c uses the first d[c, f] columns, so a table is as wide as its widest group).

    DeepCTR-Torch's regularization list holds the parameters captured at construction; the new tables
    replace the old ones in it, so ``get_regularization_loss`` keeps regularizing what is trained.
    """
    replaced: dict[int, nn.Parameter] = {}
    for name, width in widths.items():
        old = backbone.model.embedding_dict[name]
        if not 0 <= width <= backbone.dim:
            raise ValueError(f"field '{name}': width must be in [0, {backbone.dim}], got {width}")
        new = nn.Embedding(old.num_embeddings, width, sparse=old.sparse).to(old.weight.device)
        with torch.no_grad():
            new.weight.copy_(old.weight[:, :width])
        backbone.model.embedding_dict[name] = new
        replaced[id(old.weight)] = new.weight
    backbone.model.regularization_weight = [
        ([replaced.get(id(_parameter(w)), _parameter(w)) for w in params], l1, l2)
        for params, l1, l2 in backbone.model.regularization_weight]


def _itself(weight: Tensor) -> tuple[Tensor]:
    return (weight,)


def _parameter(entry: Tensor | tuple[str, Tensor]) -> Tensor:
    """DeepCTR-Torch keeps plain parameters and ``named_parameters`` pairs in one list."""
    return entry[1] if isinstance(entry, tuple) else entry
