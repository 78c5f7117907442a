"""Where a group's inputs sit in the compact model's per-row input, and where the trained weights read them.

The compact model looks every field up once at its stored width and concatenates the results with the dense
fields and one zero column: the row ``[e_1 (w_1) | ... | e_F (w_F) | dense (n) | 0]``. Group ``c`` reads the
first ``d[c, f]`` columns of field f (its live columns). The trained DeepCTR-Torch layers read the
zero-padded input ``[e_1 (D) | ... | e_F (D) | dense]`` (the DNN and cross network) or the (B, F, D) stack
(FM, BiInteraction, CIN). :class:`RowLayout` maps between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["GroupColumns", "RowLayout"]


@dataclass(frozen=True)
class GroupColumns:
    """One group's columns.

    Args:
        live: columns of the row that the group's flat input reads: live embedding coordinates field by field,
            then the dense fields.
        full: the same coordinates' positions in the backbone's zero-padded flat input (``f * D + d`` for an
            embedding coordinate, ``F * D + j`` for dense field j): the columns of the trained weights to keep.
        padded: positions in the full flat input the group never fills (zeros there, or constants after a
            cross layer): the complement of ``full``.
        fields: the fields the group keeps (``d[c, f] > 0``), in schema order.
        width: the group's widest field (0 when it keeps none).
        stack: ``len(fields) * width`` columns of the row giving the (n, fields, width) stack the FM-like
            layers read, each field zero-padded to ``width`` (the zero column fills the padding).
        dense: the dense fields' columns of the row.
    """

    live: tuple[int, ...]
    full: tuple[int, ...]
    padded: tuple[int, ...]
    fields: tuple[int, ...]
    width: int
    stack: tuple[int, ...]
    dense: tuple[int, ...]


@dataclass(frozen=True)
class RowLayout:
    """The compact row of a backbone whose fields are stored at ``widths``, ``dim`` wide when zero-padded.

    Args:
        widths: each embedded field's stored table width, in schema order.
        dense: the number of dense fields.
        dim: the backbone's embedding dimension D (what the trained layers were built for).
    """

    widths: tuple[int, ...]
    dense: int
    dim: int

    @property
    def offsets(self) -> tuple[int, ...]:
        """Where each field's columns start in the row."""
        starts, at = [], 0
        for width in self.widths:
            starts.append(at)
            at += width
        return tuple(starts)

    @property
    def dense_start(self) -> int:
        return sum(self.widths)

    @property
    def zero(self) -> int:
        """The row's last column, always 0: what padding reads."""
        return self.dense_start + self.dense

    def padded_prefix(self, columns: int) -> tuple[int, ...]:
        """Row columns of every field's first ``columns`` coordinates, zero-padded: the (F, columns) layout a
        router reads (``columns = D`` gives the full zero-padded (F, D) embeddings)."""
        return tuple(start + d if d < width else self.zero
                     for start, width in zip(self.offsets, self.widths) for d in range(columns))

    def group(self, dims: Sequence[int]) -> GroupColumns:
        """The columns of a group with per-field dimensions ``dims``."""
        dims = tuple(int(d) for d in dims)
        if len(dims) != len(self.widths) or any(d > w for d, w in zip(dims, self.widths)):
            raise ValueError(f"group dims {dims} do not fit the stored widths {self.widths}")
        fields = len(self.widths)
        live, full = [], []
        for f, (start, d) in enumerate(zip(self.offsets, dims)):
            live += [start + k for k in range(d)]
            full += [f * self.dim + k for k in range(d)]
        dense = tuple(self.dense_start + j for j in range(self.dense))
        live += dense
        full += [fields * self.dim + j for j in range(self.dense)]
        kept = tuple(f for f, d in enumerate(dims) if d > 0)
        width = max((dims[f] for f in kept), default=0)
        stack = tuple(self.offsets[f] + k if k < dims[f] else self.zero for f in kept for k in range(width))
        taken = set(full)
        padded = tuple(p for p in range(fields * self.dim + self.dense) if p not in taken)
        return GroupColumns(tuple(live), tuple(full), padded, kept, width, stack, dense)
