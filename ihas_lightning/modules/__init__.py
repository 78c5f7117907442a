"""LightningModules: the plain backbone, the search stage, the supernet and the retrained groups."""

from .backbone_module import BackboneModule
from .base import CTRModule, NonFiniteLossError

__all__ = ["BackboneModule", "CTRModule", "NonFiniteLossError"]
