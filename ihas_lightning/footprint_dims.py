"""Per-field embedding widths that meet a parameter target: the equal-footprint baselines' dimensions.

Two rules, both returning ``{field: width}`` whose tables hold ``sum(vocab[f] * width[f])`` parameters:

* :func:`matched_field_dims` (baseline (b), uniform at iHAS's footprint): every field gets ``d`` or ``d + 1``.
* :func:`mde_field_dims` (baseline (g), mixed-dimension embeddings): widths proportional to
  ``vocab ** -alpha`` (Ginart et al. 2019), floored, +1 columns by largest fractional part while they fit,
  then the rest with the same +1 rule (and, where that stays short, one column more on a field and the excess
  taken back from others). The target wins over the power law's order: two fields can end a column out of it.

The +1 rule (:func:`remainder_fields`) is deterministic: fields in descending vocabulary order (ties: schema
order); two greedy passes over them, one that adds a field only while the sum stays at or below the remainder
("fits"), one that adds a field whenever that brings the sum closer to the remainder ("closer"); the pass
whose sum is nearer the remainder is kept (a tie keeps "fits", which never overshoots). Where the
vocabularies are too coarse to come within 1% of the target (a single huge field), the result is the
closest these passes find, and :func:`footprint_gap` says how far it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["TOLERANCE", "footprint_gap", "matched_field_dims", "mde_field_dims", "remainder_fields", "table_params",
           "width_label"]


TOLERANCE = 0.01
"""The relative gap to the target that the rules aim within (issue 16: the baselines match iHAS's footprint
within 1%)."""


def table_params(field_dims: Mapping[str, int], vocab_sizes: Mapping[str, int]) -> int:
    """Embedding parameters of tables at ``field_dims``: ``sum(vocab[f] * dims[f])``."""
    return int(sum(int(vocab_sizes[f]) * int(d) for f, d in field_dims.items()))


def footprint_gap(params: int, target: int) -> float:
    """Relative gap ``(params - target) / target`` (positive: above the target)."""
    if target <= 0:
        raise ValueError(f"the parameter target must be > 0, got {target}")
    return (int(params) - int(target)) / int(target)


def remainder_fields(remainder: int, vocab_sizes: Mapping[str, int], eligible: Sequence[str]) -> list[str]:
    """The ``eligible`` fields whose vocabularies sum nearest ``remainder`` by the module's deterministic
    two-pass greedy rule (descending vocabulary, ties in the given order; "fits" kept on a tie)."""
    order = sorted(eligible, key=lambda f: -int(vocab_sizes[f]))       # stable: ties keep the given order
    fits, fits_sum, closer, closer_sum = [], 0, [], 0
    for f in order:
        v = int(vocab_sizes[f])
        if fits_sum + v <= remainder:
            fits.append(f)
            fits_sum += v
        if abs(remainder - closer_sum - v) < abs(remainder - closer_sum):
            closer.append(f)
            closer_sum += v
    return closer if abs(remainder - closer_sum) < abs(remainder - fits_sum) else fits


def matched_field_dims(target_params: int, vocab_sizes: Mapping[str, int],
                       fields: Sequence[str] | None = None) -> dict[str, int]:
    """Every field ``d`` or ``d + 1`` columns (``d >= 1``), tables nearest ``target_params``.

    ``d = max(1, target // rows)`` with ``rows = sum(vocab)``; the fields that get ``d + 1`` fill the
    remainder ``target - d * rows`` (:func:`remainder_fields`). ``fields`` (default: ``vocab_sizes``' order) is
    the schema order, which breaks ties. Example: vocabularies a=10, b=30, c=60 and target 240 give d=2 and
    a remainder of 40 = a + b: ``{"a": 3, "b": 3, "c": 2}``, exactly 240.
    """
    fields = list(fields if fields is not None else vocab_sizes)
    if not fields:
        raise ValueError("no fields to give dimensions to")
    rows = sum(int(vocab_sizes[f]) for f in fields)
    base = max(1, int(target_params) // rows)
    wider = set(remainder_fields(int(target_params) - base * rows, vocab_sizes, fields))
    return {f: base + (f in wider) for f in fields}


def mde_field_dims(target_params: int, vocab_sizes: Mapping[str, int], alpha: float, max_dim: int,
                   fields: Sequence[str] | None = None) -> dict[str, int]:
    """Mixed-dimension widths: field f's width proportional to ``vocab[f] ** -alpha``, tables nearest
    ``target_params``, integers in ``[1, max_dim]``.

    Ginart et al. 2019, "Mixed Dimension Embeddings with Application to Memory-Efficient Recommendation
    Systems" (arXiv 1909.11810), power-law rule in block form, as their reference ``md_solver`` (DLRM,
    ``tricks/md_embedding_bag.py``) computes it from each block's row count ``n``: ``d = lambda * n ** -alpha``
    with ``lambda = B / sum(n ** (1 - alpha))`` for a parameter budget ``B``. One block per field here, so a
    field's popularity per row is ``1 / vocab`` and larger vocabularies get fewer columns for ``alpha > 0``;
    ``alpha = 0`` is uniform. The continuous widths are clamped to ``[1, max_dim]`` (``lambda`` found by
    bisection so that the clamped widths meet the budget), floored, and brought onto the target by
    :func:`_rounded_onto_target`.
    """
    fields = list(fields if fields is not None else vocab_sizes)
    if not fields:
        raise ValueError("no fields to give dimensions to")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if max_dim < 1:
        raise ValueError(f"max_dim must be >= 1, got {max_dim}")
    vocab = {f: int(vocab_sizes[f]) for f in fields}
    shape = {f: float(vocab[f]) ** -alpha for f in fields}

    def widths(scale: float) -> dict[str, float]:
        return {f: min(float(max_dim), max(1.0, scale * shape[f])) for f in fields}

    def params(scale: float) -> float:
        return sum(vocab[f] * w for f, w in widths(scale).items())

    low, high = 0.0, max_dim / min(shape.values())            # at ``high`` every field is at max_dim
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if params(middle) < target_params else (low, middle)
    return _rounded_onto_target(widths(high), vocab, int(target_params), max_dim)


def _rounded_onto_target(continuous: dict[str, float], vocab: Mapping[str, int], target: int,
                         max_dim: int) -> dict[str, int]:
    """Continuous widths in ``[1, max_dim]`` to integers near ``target``.

    First choice, the power law's order kept: floored, then +1 column by largest fractional part first while it
    fits, the rest by :func:`_filled`. It is kept when within :data:`TOLERANCE` of the target; otherwise the
    nearer of it and the plain :func:`_filled` of the floored widths (a tie: the first).
    """
    floored = {f: int(w) for f, w in continuous.items()}
    remainder = target - table_params(floored, vocab)
    raised = []
    for f in sorted(continuous, key=lambda f: floored[f] - continuous[f]):       # largest fraction first
        if continuous[f] > floored[f] and floored[f] < max_dim and vocab[f] <= remainder:
            raised.append(f)
            remainder -= vocab[f]
    ordered = _filled(_adjusted(floored, raised, 1), vocab, target, max_dim, fixed=raised)
    if abs(footprint_gap(table_params(ordered, vocab), target)) <= TOLERANCE:
        return ordered
    plain = _filled(floored, vocab, target, max_dim)
    nearer = abs(table_params(plain, vocab) - target) < abs(table_params(ordered, vocab) - target)
    return plain if nearer else ordered


def _adjusted(dims: dict[str, int], fields: Sequence[str], step: int) -> dict[str, int]:
    return {f: d + step * (f in fields) for f, d in dims.items()}


def _filled(dims: dict[str, int], vocab: Mapping[str, int], target: int, max_dim: int,
            fixed: Sequence[str] = ()) -> dict[str, int]:
    """``dims`` brought up to ``target`` by +1 columns (:func:`remainder_fields` over the fields below
    ``max_dim`` and not ``fixed``). When that stays short (coarse vocabularies), also tried: one more column on
    the smallest-vocabulary such field that covers the rest, the excess taken back as -1 columns on the other
    fields above 1 column; the nearer is kept (a tie: the first)."""
    free = [f for f in dims if dims[f] < max_dim and f not in fixed]
    filled = _adjusted(dims, remainder_fields(target - table_params(dims, vocab), vocab, free), 1)
    short = target - table_params(filled, vocab)
    covering = sorted((f for f in filled if filled[f] < max_dim and vocab[f] >= short), key=lambda f: int(vocab[f]))
    if short <= 0 or not covering:
        return filled
    over = _adjusted(filled, covering[:1], 1)
    excess = table_params(over, vocab) - target
    trimmed = _adjusted(over, remainder_fields(excess, vocab, [f for f in over if over[f] > 1 and f != covering[0]]),
                        -1)
    return trimmed if abs(table_params(trimmed, vocab) - target) < short else filled


def width_label(entry: Mapping) -> str:
    """A plain baseline's widths from its metrics: ``uniform dim 8``, or ``dims 7-8`` when its fields differ
    (``"dim"`` None, ``"dims"`` per field)."""
    if entry.get("dim") is not None:
        return f"uniform dim {entry['dim']}"
    widths = list(entry["dims"].values())
    return f"dims {min(widths)}-{max(widths)}"
