"""Supernet sampling (NASRec-style weight sharing) over per-field embedding dimensions and DNN widths.

NASRec (Zhang et al., WWW 2023, arXiv 2207.07187) trains one supernet and scores any sub-architecture
with the supernet's weights instead of training it. Here the supernet is the user's DeepCTR-Torch model
at the largest dimension D, and a sub-architecture is

* a dimension ``d_f`` per field: field f keeps the *prefix* ``e[:, f, :d_f]`` of its embedding (weight
  sharing by prefix, as NASRec's elastic embeddings and OptEmbed), the other coordinates are zeroed;
* a width per DNN hidden layer: the layer keeps the prefix of its units (NASRec's elastic linear layers).

Zeroing is exact: a masked coordinate or unit contributes exactly 0 to the output and receives exactly 0
gradient, so a step that samples a sub-architecture trains only that sub-architecture's weights. With
no sub-architecture applied, the masks are not in the graph at all and the supernet *is* the backbone.

:class:`SupernetMasks` installs the masks on a :class:`~ihas_lightning.backbones.CTRBackbone` (through its
``embedding_transform`` and forward hooks on the DNN's activation layers); the training-time sampling
schedule lives in :class:`~ihas_lightning.callbacks.SupernetSampler`. See docs/design.md#5-supernet-sampling.

Example:
    >>> masks = SupernetMasks(backbone, SupernetConfig(dim_choices=(2, 4, 8, 16)))
    >>> sub = masks.sample(torch.Generator().manual_seed(0))
    >>> masks.apply(sub); logits = backbone(batch); masks.clear()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .backbones import CTRBackbone
from .flops import backbone_flops, dnn_of
from .narrow_dnn import NARROW_DNN_BACKBONES, NarrowDNN, narrow_dnn_columns, narrowable
from .subarchitecture import SandwichPlan, SubArchitecture, SubArchitectureBatch, SupernetConfig

__all__ = ["SupernetMasks", "flops_per_sample"]

class SupernetMasks:
    """Prefix masks on a backbone's field embeddings and DNN hidden units, switched per step.

    Installing takes the backbone's ``embedding_transform`` and adds a forward hook to each of the DNN's
    activation layers (after batch norm and activation, so a masked unit is exactly 0 whatever the
    activation; dropout keeps 0 at 0). With nothing applied both return their input untouched.

    Args:
        backbone: the supernet, built at the largest dimension.
        config: the search space used by :meth:`sample` (dims above ``backbone.dim`` are rejected).

    Example:
        >>> masks = SupernetMasks(module.backbone)
        >>> masks.apply(SubArchitecture.parse("user_id=4", masks.fields, masks.dim, masks.hidden_units))
    """

    def __init__(self, backbone: CTRBackbone, config: SupernetConfig | None = None) -> None:
        if not isinstance(backbone, CTRBackbone):
            raise TypeError(f"SupernetMasks needs a CTRBackbone, got {type(backbone).__name__}")
        if backbone.embedding_transform is not None:
            raise ValueError("the backbone already has an embedding_transform (gates or other masks); "
                             "a supernet needs it for its own masks")
        self.backbone = backbone
        self.fields: tuple[str, ...] = tuple(backbone.fields)
        self.dim = backbone.dim
        dnn = dnn_of(backbone)
        linears = dnn.linears if dnn is not None else ()
        self.hidden_units: tuple[int, ...] = tuple(int(layer.out_features) for layer in linears)
        if config is None:
            defaults = SupernetConfig()
            config = SupernetConfig(dim_choices=tuple(d for d in defaults.dim_choices if d <= self.dim) or (self.dim,))
        self.check_config(config)
        self.config = config
        self._dims: Tensor | None = None            # (F,) or (B, F)
        self._widths: list[Tensor] | None = None    # per layer: (H,) or (B, H) 0/1 masks
        self._cache: dict[tuple, Tensor] = {}
        self.active: SubArchitecture | SubArchitectureBatch | None = None
        backbone.embedding_transform = self._mask_embeddings
        self._handles = []
        if dnn is not None:
            activations = list(dnn.activation_layers)
            if len({id(a) for a in activations}) != len(activations):
                raise ValueError("the DNN shares one activation module between layers; cannot mask layers apart")
            self._handles = [a.register_forward_hook(self._hook(i)) for i, a in enumerate(activations)]

    def check_config(self, config: SupernetConfig) -> None:
        """Errors for a search space this backbone cannot hold (checked when the sampler's trainer starts)."""
        if max(config.dim_choices) > self.dim:
            raise ValueError(f"dim_choices {list(config.dim_choices)} exceed the supernet's dimension {self.dim}")

    @property
    def full(self) -> SubArchitecture:
        return SubArchitecture.full(self.fields, self.dim, self.hidden_units)

    def smallest(self, config: SupernetConfig | None = None) -> SubArchitecture:
        """Every field at the smallest positive dim choice, every layer at the smallest width share.

        Positive: with 0 among the choices the smallest of every choice embeds nothing, and the sandwich rule
        would spend a pass a step on a network that sees no field; the smallest one that still embeds every
        field trains the narrow layers on real inputs (BigNAS's smallest child, taken over the non-empty ones).
        """
        config = config or self.config
        widths = tuple(max(1, round(min(config.width_choices) * h)) for h in self.hidden_units) \
            if config.sample_widths else self.hidden_units
        dim = min(d for d in config.dim_choices if d > 0)    # SupernetConfig guarantees a positive choice
        return SubArchitecture(self.fields, (dim,) * len(self.fields), widths)

    def sandwich(self, generator: torch.Generator, step: int = 0,
                 config: SupernetConfig | None = None) -> SandwichPlan:
        """The sandwich rule's step: the largest, the smallest, then ``config.sandwich`` sampled ones."""
        config = config or self.config
        sampled = tuple(self.sample(generator, step, config=config) for _ in range(config.sandwich))
        return SandwichPlan((self.full, self.smallest(config), *sampled), config.distill)

    # -- switching ----------------------------------------------------------------------------------

    def apply(self, subarch: SubArchitecture | SubArchitectureBatch) -> None:
        """Make every following forward use ``subarch`` until :meth:`clear` or the next ``apply``."""
        if tuple(subarch.fields) != self.fields:
            raise ValueError(f"sub-architecture fields {list(subarch.fields)} differ from the backbone's "
                             f"{list(self.fields)}")
        if isinstance(subarch, SubArchitectureBatch):
            dims, widths = subarch.dims.long(), subarch.widths.long()
            if dims.ndim != 2 or widths.ndim != 2 or widths.shape[1] != len(self.hidden_units) \
                    or widths.shape[0] != dims.shape[0]:
                raise ValueError(f"per-sample dims must be (B, {len(self.fields)}) and widths (B, "
                                 f"{len(self.hidden_units)}), got {tuple(dims.shape)} and {tuple(widths.shape)}")
            self._dims = dims
            self._widths = [(torch.arange(h) < widths[:, i:i + 1]).float() for i, h in enumerate(self.hidden_units)]
        else:
            widths = subarch.widths or self.hidden_units
            if len(widths) != len(self.hidden_units) or any(w > h for w, h in zip(widths, self.hidden_units)):
                raise ValueError(f"widths {list(widths)} do not fit the DNN's hidden layers {list(self.hidden_units)}")
            if max(subarch.dims) > self.dim:
                raise ValueError(f"dims {list(subarch.dims)} exceed the supernet's dimension {self.dim}")
            self._dims = torch.tensor(subarch.dims, dtype=torch.long)
            self._widths = [(torch.arange(h) < w).float() for w, h in zip(widths, self.hidden_units)]
        self._cache.clear()
        self.active = subarch

    @contextlib.contextmanager
    def narrowed(self, subarch: SubArchitecture) -> Iterator[bool]:
        """``subarch`` applied with the DNN physically cut to it (:class:`~ihas_lightning.narrow_dnn.NarrowDNN`):
        the masked network's outputs at the sub-architecture's own cost. Yields whether the DNN was cut (False: a
        backbone outside :data:`~ihas_lightning.narrow_dnn.NARROW_DNN_BACKBONES`, batch norm or per-unit
        activations; then the masks alone). The narrow copy's weights train apart from the supernet's and are
        dropped on exit, when the DNN and the sub-architecture applied before come back."""
        previous = self.active
        model, dnn = self.backbone.model, dnn_of(self.backbone)
        cut = (isinstance(subarch, SubArchitecture) and dnn is not None
               and type(model).__name__ in NARROW_DNN_BACKBONES
               and narrowable(dnn, len(self.fields), self.dim, len(self.backbone.schema.dense)))
        self.apply(subarch)
        try:
            if not cut:
                yield False
                return
            columns = narrow_dnn_columns(subarch.dims, self.dim, len(self.backbone.schema.dense))
            model.dnn, widths = NarrowDNN(dnn, columns, subarch.widths or self.hidden_units), self._widths
            self._widths = None                   # the narrow DNN has only the kept units: nothing to mask
            try:
                yield True
            finally:
                model.dnn, self._widths = dnn, widths
        finally:
            self.apply(previous) if previous is not None else self.clear()

    def clear(self) -> None:
        """Back to the full network; the masks leave the graph (bit-identical to the plain backbone)."""
        self._dims, self._widths, self.active = None, None, None
        self._cache.clear()

    def remove(self) -> None:
        """Uninstall: the backbone no longer knows about the supernet."""
        self.clear()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.backbone.embedding_transform == self._mask_embeddings:
            self.backbone.embedding_transform = None

    # -- sampling -----------------------------------------------------------------------------------

    def sample(self, generator: torch.Generator, step: int = 0, batch_size: int | None = None,
               config: SupernetConfig | None = None) -> SubArchitecture | SubArchitectureBatch:
        """Draw a sub-architecture: dims per field (``config.sampling``), uniform widths, full with warm-up probability.

        The number of draws from ``generator`` does not depend on the outcome, so two generators in the same
        state (all DDP ranks, a resumed run) give the same sequence. ``batch_size`` is needed with
        ``config.per_sample``.
        """
        config = config or self.config
        self.check_config(config)
        n = batch_size if config.per_sample else 1
        if config.per_sample and (batch_size is None or batch_size < 1):
            raise ValueError(f"per-sample sampling needs batch_size >= 1, got {batch_size}")
        dim_choices = torch.tensor(config.dim_choices)
        full = torch.rand(n, generator=generator) < config.full_probability(step)                  # (n,)
        if config.sampling == "capped":   # a cap per draw, then dims uniform up to it
            cap = torch.randint(len(dim_choices), (n, 1), generator=generator)
            index = (torch.rand(n, len(self.fields), generator=generator) * (cap + 1)).long().clamp(max=cap)
            dims = dim_choices[index]                                                                       # (n, F)
        else:
            dims = dim_choices[torch.randint(len(dim_choices), (n, len(self.fields)), generator=generator)]  # (n, F)
        shares = torch.tensor(config.width_choices, dtype=torch.float64)
        picked = shares[torch.randint(len(shares), (n, len(self.hidden_units)), generator=generator)]   # (n, L)
        hidden = torch.tensor(self.hidden_units, dtype=torch.float64)
        widths = torch.clamp((picked * hidden).round(), min=1).long() if config.sample_widths \
            else hidden.long().expand(n, -1)
        dims = torch.where(full[:, None], torch.full_like(dims, self.dim), dims)
        widths = torch.where(full[:, None], hidden.long().expand(n, -1), widths)
        if config.per_sample:
            return SubArchitectureBatch(self.fields, dims, widths)
        return SubArchitecture(self.fields, tuple(dims[0].tolist()), tuple(widths[0].tolist()))

    # -- the masks themselves -------------------------------------------------------------------------

    def _mask_embeddings(self, embeddings: Tensor) -> Tensor:  # (B, F, D) -> (B, F, D)
        if self._dims is None:
            return embeddings
        key = ("emb", embeddings.device, embeddings.dtype)
        mask = self._cache.get(key)
        if mask is None:
            dims = self._dims.to(embeddings.device)
            coords = torch.arange(embeddings.shape[-1], device=embeddings.device)
            mask = (coords < dims[..., None]).to(embeddings.dtype)       # (F, D) or (B, F, D)
            self._cache[key] = mask
        if mask.ndim == 3 and mask.shape[0] != embeddings.shape[0]:
            raise ValueError(f"per-sample masks were drawn for {mask.shape[0]} samples, the batch has "
                             f"{embeddings.shape[0]}")
        return embeddings * mask

    def _hook(self, layer: int):
        def mask_units(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:  # output (B, H)
            if self._widths is None:
                return None
            key = ("dnn", layer, output.device, output.dtype)
            mask = self._cache.get(key)
            if mask is None:
                mask = self._widths[layer].to(device=output.device, dtype=output.dtype)   # (H,) or (B, H)
                self._cache[key] = mask
            return output * mask
        return mask_units


def flops_per_sample(backbone: CTRBackbone, subarch: SubArchitecture | None = None) -> float:
    """FLOPs per sample of ``subarch`` (default: the full network) run as a compact model: see
    :func:`ihas_lightning.flops.backbone_flops`, which this calls (raises ``NotImplementedError`` likewise)."""
    if subarch is None:
        return backbone_flops(backbone)
    return backbone_flops(backbone, subarch.dims, subarch.widths)
