"""One group's compact layers: the trained backbone's dense weights cut to the group's live coordinates.

In a group, a padded coordinate of the zero-padded input is an exact 0, so:

- a linear layer reading it (the DNN's first layer, the final linear layer) keeps only its live columns;
- FM and NFM's BiInteraction on fields zero-padded to D equal the same sums on the group's kept fields
  zero-padded to the group's widest field (a 0 coordinate adds nothing);
- CIN works coordinate by coordinate; on a coordinate where every field is 0 each layer's output is its
  activated bias, so the D - width padded coordinates add a constant, precomputed here (with the final linear
  layer, one number);
- DCN's vector cross layer ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l`` leaves a padded coordinate at the running
  sum of the biases (x0 is 0 there): an input-independent constant, so its share of ``x_l . w_l`` and of the
  final linear layer is a per-layer constant, folded in; the matrix form ``x0 * (W x_l + b) + x_l`` keeps
  padded coordinates at 0, so W keeps its live rows and columns.

A DNN's BatchNorm (evaluation statistics) is folded into its linear layer. The weights are copies taken when
the head is built (inference only: dropout off, BatchNorm statistics fixed). See
docs/design.md#41-retraining-shared-tables-and-the-router.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import CTRBackbone
from ..flops import is_embedding_table
from .layout import GroupColumns, RowLayout

__all__ = ["COMPACT_BACKBONES", "GroupHead", "WeightSource", "build_head"]

COMPACT_BACKBONES = ("DeepFM", "DCN", "WDL", "NFM", "xDeepFM")
"""Backbones whose groups compute at their own widths; any other is served zero-padded (see ``compact``)."""


class WeightSource:
    """The backbone's dense tensors one group reads: its own, or the group's copies under ``group_dense``.

    Each tensor is copied (detached) once on first use, so groups that share a layer share one copy. Records
    what was read: :meth:`check_all_read` refuses a head that left a dense parameter out (a configuration this
    code does not know would otherwise give silently wrong predictions).
    """

    def __init__(self, backbone: CTRBackbone, overrides: dict[str, Tensor] | None = None,
                 copies: dict[int, Tensor] | None = None) -> None:
        self.tensors = {**dict(backbone.named_parameters()), **dict(backbone.named_buffers()), **(overrides or {})}
        self.grouped = overrides is not None
        self.copies = copies if copies is not None else {}
        self.read: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def __call__(self, name: str) -> Tensor:
        self.read.add(name)
        tensor = self.tensors[name]
        if id(tensor) not in self.copies:
            self.copies[id(tensor)] = tensor.detach().clone()
        return self.copies[id(tensor)]

    def module(self, name: str, module: nn.Module | None) -> nn.Module | None:
        """Reuse a stateless layer (an activation) as it is; one with buffers (Dice's BatchNorm: mode-dependent)
        or, under ``group_dense``, with parameters (they differ per group) is refused."""
        if module is None:
            return None
        if any(True for _ in module.buffers()):
            raise NotImplementedError(f"layer '{name}' ({type(module).__name__}) keeps buffers")
        params = [f"{name}.{n}" for n, _ in module.named_parameters()]
        if params and self.grouped:
            raise NotImplementedError(f"layer '{name}' ({type(module).__name__}) has per-group parameters")
        self.read.update(params)
        return module

    def check_all_read(self, kind: str) -> None:
        unread = [n for n in self.tensors if not is_embedding_table(n) and n not in self.read
                  and not n.endswith("num_batches_tracked")]
        if unread:
            raise NotImplementedError(f"the compact {kind} does not read {unread[:3]} (an option it does not know)")


def _index(values: Sequence[int]) -> Tensor:
    return torch.tensor(list(values), dtype=torch.long)


class _MLP(nn.Module):
    """DeepCTR-Torch's ``DNN`` at inference: linear (BatchNorm folded in) then activation, per layer."""

    def __init__(self, layers: list[tuple[Tensor, Tensor]], activations: list[nn.Module]) -> None:
        super().__init__()
        for i, (weight, bias) in enumerate(layers):
            self.register_buffer(f"weight{i}", weight)
            self.register_buffer(f"bias{i}", bias)
        self.activations = nn.ModuleList(activations)

    def forward(self, x: Tensor) -> Tensor:
        for i, activation in enumerate(self.activations):
            x = activation(F.linear(x, getattr(self, f"weight{i}"), getattr(self, f"bias{i}")))
        return x


def _mlp(source: WeightSource, dnn: nn.Module, first_columns: Sequence[int], prefix: str = "model.dnn") -> _MLP:
    """The DNN with its first layer's input cut to ``first_columns`` (positions in the full input)."""
    layers = []
    for i in range(len(dnn.linears)):
        weight, bias = source(f"{prefix}.linears.{i}.weight"), source(f"{prefix}.linears.{i}.bias")
        if i == 0:
            weight = weight[:, _index(first_columns)]
        if dnn.use_bn:
            bn = f"{prefix}.bn.{i}"
            scale = source(f"{bn}.weight") / torch.sqrt(source(f"{bn}.running_var") + dnn.bn[i].eps)
            weight, bias = weight * scale[:, None], (bias - source(f"{bn}.running_mean")) * scale + source(f"{bn}.bias")
        layers.append((weight, bias))
    activations = [source.module(f"{prefix}.activation_layers.{i}", a) for i, a in enumerate(dnn.activation_layers)]
    return _MLP(layers, activations)


def _fm(stack: Tensor) -> Tensor:
    """(n, fields, width) -> (n, width): DeepCTR's BiInteraction, ``0.5 * ((sum v)^2 - sum v^2)``."""
    total = stack.sum(1)
    return 0.5 * (total * total - (stack * stack).sum(1))


class GroupHead(nn.Module):
    """(n, row) compact rows of one group -> (n,) logits, the first-order (linear) terms of the sparse fields
    excluded (the tables are shared; :class:`~ihas_lightning.compact.CompactGroups` adds them once).

    Subclasses add the backbone's interaction terms in :meth:`terms`; the first-order dense term and the output
    bias (with any folded constant, ``offset``) are common."""

    offset: Tensor

    def __init__(self, backbone: CTRBackbone, columns: GroupColumns, source: WeightSource) -> None:
        super().__init__()
        self.fields, self.width = len(columns.fields), columns.width
        self.register_buffer("live_cols", _index(columns.live))
        self.register_buffer("dense_cols", _index(columns.dense))
        self.register_buffer("stack_cols", _index(columns.stack))
        self.dense_first_order = bool(columns.dense) and source.has("model.linear_model.weight")
        if self.dense_first_order:
            self.register_buffer("dense_weight", source("model.linear_model.weight"))                 # (n_dense, 1)
        bias = source("model.out.bias") if source.has("model.out.bias") else torch.zeros(1)
        self.register_buffer("offset", bias.reshape(()).clone())

    def stack(self, rows: Tensor) -> Tensor:
        """(n, fields, width): the kept fields, each zero-padded to the group's widest."""
        return rows.index_select(1, self.stack_cols).reshape(rows.shape[0], self.fields, self.width)

    def terms(self, rows: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, rows: Tensor) -> Tensor:
        logit = self.terms(rows) + self.offset
        if self.dense_first_order:
            logit = logit + rows.index_select(1, self.dense_cols).matmul(self.dense_weight).squeeze(1)
        return logit


class _DeepFM(GroupHead):
    def __init__(self, backbone: CTRBackbone, columns: GroupColumns, source: WeightSource) -> None:
        super().__init__(backbone, columns, source)
        model = backbone.model
        self.use_fm = bool(getattr(model, "use_fm", False)) and self.fields > 0       # WDL: no FM
        self.use_dnn = bool(model.use_dnn)
        if self.use_dnn:
            self.dnn = _mlp(source, model.dnn, columns.full)
            self.register_buffer("out_weight", source("model.dnn_linear.weight").T)                      # (h, 1)

    def terms(self, rows: Tensor) -> Tensor:
        logit = rows.new_zeros(rows.shape[0])
        if self.use_fm:
            logit = logit + _fm(self.stack(rows)).sum(1)
        if self.use_dnn:
            logit = logit + self.dnn(rows.index_select(1, self.live_cols)).matmul(self.out_weight).squeeze(1)
        return logit


class _NFM(GroupHead):
    def __init__(self, backbone: CTRBackbone, columns: GroupColumns, source: WeightSource) -> None:
        super().__init__(backbone, columns, source)
        # the DNN reads [BiInteraction (D) | dense]; coordinates past the widest kept field are 0
        first = [*range(self.width), *(backbone.dim + j for j in range(len(columns.dense)))]
        self.dnn = _mlp(source, backbone.model.dnn, first)
        self.register_buffer("out_weight", source("model.dnn_linear.weight").T)                          # (h, 1)

    def terms(self, rows: Tensor) -> Tensor:
        dense = rows.index_select(1, self.dense_cols)
        inputs = torch.cat([_fm(self.stack(rows)), dense], dim=1) if self.fields else dense
        return self.dnn(inputs).matmul(self.out_weight).squeeze(1)


class _DCN(GroupHead):
    def __init__(self, backbone: CTRBackbone, columns: GroupColumns, source: WeightSource) -> None:
        super().__init__(backbone, columns, source)
        model = backbone.model
        self.use_dnn, self.cross = len(model.dnn_hidden_units) > 0, int(model.cross_num)
        self.vector = getattr(model.crossnet, "parameterization", "vector") == "vector"
        live, padded = _index(columns.full), _index(columns.padded)
        out = source("model.dnn_linear.weight")[0]                                          # (cross? in + h : h)
        constant = torch.zeros((), dtype=torch.float64)
        if self.cross:
            kernels, biases = source("model.crossnet.kernels"), source("model.crossnet.bias")  # (L, in, 1 or in)
            if self.vector:
                self.register_buffer("kernels", kernels[:, live, :])                             # (L, live, 1)
                running = torch.zeros(len(padded), dtype=torch.float64)      # padded coordinates of x_l
                steps = []
                for layer in range(self.cross):
                    steps.append((running * kernels[layer, padded, 0].double()).sum())
                    running = running + biases[layer, padded, 0].double()
                self.register_buffer("steps", torch.stack(steps).float() if steps else torch.zeros(0))  # (L,)
                in_features = kernels.shape[1]
                constant = constant + (running * out[:in_features][padded].double()).sum()
            else:
                self.register_buffer("kernels", kernels[:, live][:, :, live])                      # (L, live, live)
            self.register_buffer("biases", biases[:, live, 0])                                      # (L, live)
            self.register_buffer("cross_weight", out[:kernels.shape[1]][live].unsqueeze(1))       # (live, 1)
        else:                                             # no cross layer: its (empty) weights are not needed
            source("model.crossnet.kernels"), source("model.crossnet.bias")
        if self.use_dnn:
            self.dnn = _mlp(source, model.dnn, columns.full)
            start = kernels.shape[1] if self.cross else 0
            self.register_buffer("out_weight", out[start:].unsqueeze(1))                             # (h, 1)
        self.offset = self.offset + constant.float()

    def terms(self, rows: Tensor) -> Tensor:
        x0 = rows.index_select(1, self.live_cols)                                                    # (n, live)
        logit = rows.new_zeros(rows.shape[0])
        if self.cross:
            x = x0
            for layer in range(self.cross):
                if self.vector:
                    x = x0 * (x.matmul(self.kernels[layer]) + self.steps[layer]) + self.biases[layer] + x
                else:
                    x = x0 * (x.matmul(self.kernels[layer].T) + self.biases[layer]) + x
            logit = logit + x.matmul(self.cross_weight).squeeze(1)
        if self.use_dnn:
            logit = logit + self.dnn(x0).matmul(self.out_weight).squeeze(1)
        return logit


def _cin(x0: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], activation: nn.Module | None,
         split_half: bool) -> Tensor:
    """DeepCTR's CIN on (n, fields, width) -> (n, feature maps), the 1x1 convolutions as matmuls."""
    hidden, outputs = x0, []
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        z = hidden.unsqueeze(2) * x0.unsqueeze(1)                                         # (n, H, fields, width)
        # every size given (no flatten, no -1): ONNX cannot infer a -1 next to an empty group's 0 rows
        z = z.reshape(z.shape[0], z.shape[1] * z.shape[2], z.shape[3])                     # (n, H*fields, width)
        # both operands batched: onnxruntime 1.30 cannot broadcast a 2-D left operand over an empty group
        y = torch.matmul(weight.expand(z.shape[0], -1, -1), z) + bias.unsqueeze(-1)          # (n, size, width)
        y = activation(y) if activation is not None else y
        if split_half and i != len(weights) - 1:
            half = weight.shape[0] // 2
            hidden, direct = y[:, :half], y[:, half:]
        else:
            hidden = direct = y
        outputs.append(direct)
    maps = torch.cat(outputs, dim=1)                                                     # (n, maps, width)
    # the sizes restated: onnxruntime 1.30's ReduceSum loses the shape of an empty group's (0, maps, width)
    return maps.sum(-1).reshape(maps.shape[0], maps.shape[1])


class _XDeepFM(GroupHead):
    def __init__(self, backbone: CTRBackbone, columns: GroupColumns, source: WeightSource) -> None:
        super().__init__(backbone, columns, source)
        model = backbone.model
        self.use_dnn, self.use_cin = bool(model.use_dnn), bool(model.use_cin)
        if self.use_dnn:
            self.dnn = _mlp(source, model.dnn, columns.full)
            self.register_buffer("out_weight", source("model.dnn_linear.weight").T)                      # (h, 1)
        if self.use_cin:
            cin, fields, kept = model.cin, len(backbone.fields), _index(columns.fields)
            self.activation = source.module("model.cin.activation", cin.activation)
            self.split_half = bool(cin.split_half)
            full_w = [source(f"model.cin.conv1ds.{i}.weight")[:, :, 0] for i in range(len(cin.layer_size))]
            full_b = [source(f"model.cin.conv1ds.{i}.bias") for i in range(len(cin.layer_size))]
            cin_out = source("model.cin_linear.weight").T                                                  # (maps, 1)
            self.register_buffer("cin_out", cin_out)
            self.layers = len(full_w)
            for i, (weight, bias) in enumerate(zip(full_w, full_b)):
                grid = weight.unflatten(1, (-1, fields))                                     # (size, H, fields)
                grid = grid[:, kept][:, :, kept] if i == 0 else grid[:, :, kept]
                self.register_buffer(f"cin_weight{i}", grid.flatten(1))
                self.register_buffer(f"cin_bias{i}", bias)
            with torch.no_grad():        # what one coordinate where every field is 0 gives
                zero = _cin(torch.zeros(1, fields, 1), full_w, full_b, self.activation, self.split_half)
            self.offset = self.offset + (backbone.dim - self.width) * zero.matmul(cin_out).reshape(())

    def terms(self, rows: Tensor) -> Tensor:
        logit = rows.new_zeros(rows.shape[0])
        if self.use_dnn:
            logit = logit + self.dnn(rows.index_select(1, self.live_cols)).matmul(self.out_weight).squeeze(1)
        if self.use_cin and self.fields:
            weights = [getattr(self, f"cin_weight{i}") for i in range(self.layers)]
            biases = [getattr(self, f"cin_bias{i}") for i in range(self.layers)]
            maps = _cin(self.stack(rows), weights, biases, self.activation, self.split_half)
            logit = logit + maps.matmul(self.cin_out).squeeze(1)
        return logit


_HEADS: dict[str, type[GroupHead]] = {"DeepFM": _DeepFM, "DCN": _DCN, "WDL": _DeepFM, "NFM": _NFM, "xDeepFM": _XDeepFM}


def build_head(backbone: CTRBackbone, layout: RowLayout, dims: Sequence[int], source: WeightSource) -> GroupHead:
    """The compact head of the group with per-field ``dims``; ``NotImplementedError`` for a backbone (or an
    option of one) with no compact form."""
    kind = type(backbone.model).__name__
    if kind not in _HEADS:
        raise NotImplementedError(f"backbone {kind} has no compact form (supported: {', '.join(COMPACT_BACKBONES)})")
    head = _HEADS[kind](backbone, layout.group(dims), source)
    source.check_all_read(kind)
    return head
