"""What the supernet samples: the search space (:class:`SupernetConfig`), one sub-architecture (per-field prefix
dimensions and DNN prefix widths, :class:`SubArchitecture`), per-sample ones (:class:`SubArchitectureBatch`) and
one sandwich-rule step (:class:`SandwichPlan`). Plain values, kept apart from the masks that apply them
(:mod:`ihas_lightning.supernet`) so that the PIM study and the CLI can read and write them without a backbone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["SAMPLINGS", "SandwichPlan", "SubArchitecture", "SubArchitectureBatch", "SupernetConfig"]

SAMPLINGS = ("uniform", "capped")


@dataclass(frozen=True)
class SupernetConfig:
    """The search space and the sampling schedule of a supernet.

    Args:
        dim_choices: candidate embedding dimensions per field, each <= the backbone's dimension; 0 drops the
            field's embedding (its first-order term stays).
        width_choices: candidate shares of each DNN hidden layer's units, in (0, 1]; a share w keeps
            ``max(1, round(w * H))`` of the layer's H units.
        per_sample: draw one sub-architecture per sample instead of one per batch.
        warmup_steps: NASRec's warm-up: the full network is sampled with probability ``1 - step / warmup_steps``
            (linear decay from 1 to 0), afterwards never on purpose. 0 = no warm-up.
        sample_widths: also sample DNN widths (otherwise every layer stays at full width).
        sandwich: BigNAS's sandwich rule: every step trains the largest sub-architecture, the smallest (every
            field at the smallest positive dim choice, the narrowest widths) and this many sampled ones, their
            losses summed (0 = off: one sampled sub-architecture per step). Costs
            ``sandwich + 2`` forward/backward passes a step.
        distill: in-place distillation weight in [0, 1] (needs ``sandwich``): every sub-architecture but the
            largest is trained on ``(1 - distill) * BCE(labels) + distill * BCE(largest's detached probabilities)``.
        sampling: ``"uniform"``: each field's dim uniform over ``dim_choices``; ``"capped"``: first a cap uniform
            over ``dim_choices``, then each field's dim uniform over the choices up to the cap, which covers small
            parameter budgets (every field small at once) far more often than uniform draws do.

    Example:
        >>> SupernetConfig(dim_choices=(4, 8, 16), warmup_steps=500).full_probability(250)
        0.5
    """

    dim_choices: tuple[int, ...] = (2, 4, 8, 16)
    width_choices: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    per_sample: bool = False
    warmup_steps: int = 0
    sample_widths: bool = True
    sandwich: int = 0
    distill: float = 0.0
    sampling: str = "uniform"

    def __post_init__(self) -> None:
        dims = tuple(int(d) for d in self.dim_choices)
        widths = tuple(float(w) for w in self.width_choices)
        if not dims or min(dims) < 0 or max(dims) < 1:
            raise ValueError(f"dim_choices must be >= 0 with at least one positive value, got {self.dim_choices}")
        if not widths or any(not 0.0 < w <= 1.0 for w in widths):
            raise ValueError(f"width_choices must be shares in (0, 1], got {self.width_choices}")
        if int(self.warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if isinstance(self.sandwich, bool) or int(self.sandwich) != self.sandwich or self.sandwich < 0:
            raise ValueError(f"sandwich must be an int >= 0, got {self.sandwich!r}")
        if not 0.0 <= float(self.distill) <= 1.0:
            raise ValueError(f"distill must be in [0, 1], got {self.distill}")
        if self.distill and not self.sandwich:
            raise ValueError("distill needs the sandwich rule (sandwich >= 1): the largest sub-architecture is the "
                             "teacher")
        if self.sandwich and self.per_sample:
            raise ValueError("the sandwich rule draws whole sub-architectures per step; it excludes per_sample")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        object.__setattr__(self, "sandwich", int(self.sandwich))
        object.__setattr__(self, "distill", float(self.distill))
        object.__setattr__(self, "dim_choices", tuple(sorted(set(dims))))
        object.__setattr__(self, "width_choices", tuple(sorted(set(widths))))
        object.__setattr__(self, "warmup_steps", int(self.warmup_steps))

    def full_probability(self, step: int) -> float:
        """Probability of sampling the full network at ``step`` (NASRec's linearly decaying warm-up)."""
        if self.warmup_steps == 0:
            return 0.0
        return max(0.0, 1.0 - step / self.warmup_steps)

    def to_dict(self) -> dict[str, Any]:
        return {"dim_choices": list(self.dim_choices), "width_choices": list(self.width_choices),
                "per_sample": self.per_sample, "warmup_steps": self.warmup_steps, "sample_widths": self.sample_widths,
                "sandwich": self.sandwich, "distill": self.distill, "sampling": self.sampling}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupernetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class SubArchitecture:
    """One sub-architecture of the supernet: a dimension per field and a width per DNN hidden layer.

    Args:
        fields: the backbone's embedded fields, in order.
        dims: kept embedding dimension of each field (0 = embedding dropped).
        widths: kept units of each DNN hidden layer (empty for a model without a DNN).

    Example:
        >>> sub = SubArchitecture.parse("C1=4,C2=8", fields=("C1", "C2", "C3"), dim=16, hidden_units=(256, 128),
        ...                             widths="0.5,0.5")
        >>> sub.dims, sub.widths
        ((4, 8, 16), (128, 64))
    """

    fields: tuple[str, ...]
    dims: tuple[int, ...]
    widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(str(f) for f in self.fields))
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.fields) != len(self.dims):
            raise ValueError(f"{len(self.fields)} fields but {len(self.dims)} dims")
        if any(d < 0 for d in self.dims):
            raise ValueError(f"dims must be >= 0, got {self.dims}")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"DNN widths must be >= 1, got {self.widths}")

    @classmethod
    def full(cls, fields: Sequence[str], dim: int, hidden_units: Sequence[int] = ()) -> SubArchitecture:
        return cls(tuple(fields), (dim,) * len(fields), tuple(hidden_units))

    def embedding_params(self, vocab_sizes: Mapping[str, int]) -> int:
        """Embedding parameters of this sub-architecture stored at its own widths: sum of vocab_f * d_f."""
        missing = [f for f in self.fields if f not in vocab_sizes]
        if missing:
            raise ValueError(f"vocab_sizes has no entry for fields {missing}")
        return int(sum(vocab_sizes[f] * d for f, d in zip(self.fields, self.dims)))

    def to_dict(self) -> dict[str, Any]:
        return {"dims": dict(zip(self.fields, self.dims)), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubArchitecture:
        dims = data["dims"]
        return cls(tuple(dims), tuple(dims.values()), tuple(data.get("widths", ())))

    def __str__(self) -> str:
        text = ",".join(f"{f}={d}" for f, d in zip(self.fields, self.dims))
        return f"{text} widths={','.join(map(str, self.widths))}" if self.widths else text

    @classmethod
    def parse(cls, dims: str, fields: Sequence[str], dim: int, hidden_units: Sequence[int] = (),
              widths: str | None = None) -> SubArchitecture:
        """From the CLI's ``FIELD=D,...`` (unnamed fields keep ``dim``) and optional widths ``0.5,0.5``.

        Widths with a decimal point are shares of the layer, integers are unit counts; one value applies to
        every layer.
        """
        fields, hidden_units = tuple(fields), tuple(hidden_units)
        chosen: dict[str, int] = {}
        for item in (p.strip() for p in dims.split(",")):
            if not item:
                continue
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--dims entry '{item}' must look like FIELD=D")
            if name not in fields:
                raise ValueError(f"--dims names unknown field '{name}'; fields are {', '.join(fields)}")
            try:
                chosen[name] = int(value)
            except ValueError:
                raise ValueError(f"--dims entry '{item}': dimension must be an integer, got '{value}'") from None
            if not 0 <= chosen[name] <= dim:
                raise ValueError(f"--dims entry '{item}': dimension must be in [0, {dim}], got {chosen[name]}")
        units = hidden_units
        if widths and not hidden_units:
            raise ValueError("--widths was given, but this supernet's backbone has no DNN whose widths it searches "
                             "(AFM, IFM, DIFM and the like: embedding dims only); leave --widths out")
        if widths:
            parts = [p.strip() for p in widths.split(",") if p.strip()]
            if len(parts) == 1:
                parts = parts * len(hidden_units)
            if len(parts) != len(hidden_units):
                raise ValueError(f"--widths has {len(parts)} values but the DNN has {len(hidden_units)} hidden layers "
                                 f"{list(hidden_units)}")
            units = tuple(_units(p, h) for p, h in zip(parts, hidden_units))
        return cls(fields, tuple(chosen.get(f, dim) for f in fields), units)


@dataclass(frozen=True)
class SubArchitectureBatch:
    """Per-sample sub-architectures (``SupernetConfig.per_sample``): dims (B, F) and widths (B, L), int64."""

    fields: tuple[str, ...]
    dims: Tensor     # (B, F)
    widths: Tensor   # (B, L)

    def to_dict(self) -> dict[str, Any]:
        return {"dims": self.dims.tolist(), "widths": self.widths.tolist()}


@dataclass(frozen=True)
class SandwichPlan:
    """One step of the sandwich rule: the sub-architectures to train, the largest first (the teacher)."""

    subarchs: tuple[SubArchitecture, ...]
    distill: float = 0.0


def _units(text: str, hidden: int) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--widths value '{text}' is not a number") from None
    units = max(1, round(value * hidden)) if "." in text else int(value)
    if not 1 <= units <= hidden:
        raise ValueError(f"--widths value '{text}' gives {units} units; the layer has {hidden}")
    return units
