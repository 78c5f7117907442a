"""Serving a retrained iHAS model with each group computing at its own widths (see ``groups.py``)."""

from .groups import CompactGroups, compact_or_none
from .heads import COMPACT_BACKBONES, GroupHead
from .layout import GroupColumns, RowLayout

__all__ = ["COMPACT_BACKBONES", "CompactGroups", "GroupColumns", "GroupHead", "RowLayout", "compact_or_none"]
