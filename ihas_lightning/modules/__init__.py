"""LightningModules: the plain backbone, the search stage, the supernet and the retrained groups."""

from .backbone_module import BackboneModule
from .base import CTRModule, NonFiniteLossError
from .config import BackboneConfig
from .retrain_module import RetrainModule
from .search_module import SearchModule
from .supernet_module import SupernetModule

__all__ = ["BackboneConfig", "BackboneModule", "CTRModule", "NonFiniteLossError", "RetrainModule", "SearchModule",
           "SupernetModule"]
