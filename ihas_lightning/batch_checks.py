"""A batch checked against its schema and embedding tables, before any lookup: errors that name the column, the
value, the batch row and the limit.

Without these checks an id past a table's end fails deep inside ``F.embedding`` (an index error on the CPU, a
device-side assert on a GPU) and a NaN dense value silently poisons every weight it touches.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .data.schema import Schema

__all__ = ["check_batch"]


def check_batch(batch: dict[str, Tensor], schema: Schema, vocab_sizes: Mapping[str, int],
                out_of_range: str = "error") -> dict[str, Tensor]:
    """``batch`` with its ids checked against ``vocab_sizes`` (the tables' rows per field) and its shapes and
    dense values against ``schema``. ``out_of_range``: ``"error"`` raises on an id outside ``[0, V)``,
    ``"oov"`` maps it to the OOV id (1)."""
    sparse, dense, multi = batch["sparse"], batch["dense"], batch.get("multi")
    expected = {"sparse": len(schema.sparse), "dense": len(schema.dense),
                "multi": sum(m.max_len for m in schema.multivalued)}
    names = {"sparse": list(schema.sparse), "dense": list(schema.dense),
             "multi": [m.name for m in schema.multivalued]}
    for kind, tensor in (("sparse", sparse), ("dense", dense), ("multi", multi)):
        if tensor is None and expected[kind] == 0:
            continue
        if tensor is None or tensor.dim() != 2 or tensor.shape[1] != expected[kind]:
            got = "none" if tensor is None else tuple(tensor.shape)
            raise ValueError(f"batch['{kind}'] must be (B, {expected[kind]}) for columns {names[kind]}, "
                             f"got shape {got}: a column is missing or extra")
    if dense.numel() and not torch.isfinite(dense).all():
        row, col = (~torch.isfinite(dense)).nonzero()[0].tolist()
        raise ValueError(f"column '{schema.dense[col]}': value {dense[row, col].item()} in batch row {row} "
                         f"is not finite (the encoder maps missing dense values to 0)")
    checked = dict(batch)
    checked["sparse"] = _check_ids(sparse, list(schema.sparse), [1] * len(schema.sparse), vocab_sizes, out_of_range)
    if multi is not None and multi.shape[1]:
        checked["multi"] = _check_ids(multi, [m.name for m in schema.multivalued],
                                      [m.max_len for m in schema.multivalued], vocab_sizes, out_of_range)
    return checked


def _check_ids(ids: Tensor, fields: list[str], widths: list[int], vocab_sizes: Mapping[str, int],
               out_of_range: str) -> Tensor:
    columns = [f for f, w in zip(fields, widths) for _ in range(w)]
    if ids.is_floating_point() or ids.dtype == torch.bool:
        bad = ~torch.isfinite(ids) | (ids != ids.round()) if ids.is_floating_point() else ids
        row, col = (bad.nonzero()[0].tolist() if bad.any() else (0, 0))
        raise TypeError(f"column '{columns[col]}': ids must be an integer tensor (int64), got {ids.dtype} "
                        f"(value {ids[row, col].item()} in batch row {row})")
    if not ids.numel():
        return ids
    limits = ids.new_tensor([vocab_sizes[f] for f in columns])                                  # (C,)
    bad = (ids < 0) | (ids >= limits)                                                          # (B, C)
    if not bad.any():
        return ids
    if out_of_range == "oov":
        return torch.where(bad, torch.ones_like(ids), ids)
    row, col = bad.nonzero()[0].tolist()
    value, limit = ids[row, col].item(), limits[col].item()
    reason = f"id {value} is negative" if value < 0 else f"id {value} >= vocabulary size {limit}"
    raise IndexError(f"column '{columns[col]}': {reason} (batch row {row}); ids are 0 = missing, 1 = OOV, "
                     f"2..{limit - 1} = known: encode the data with the run's encoder, or set "
                     f"backbone.out_of_range = 'oov'")
