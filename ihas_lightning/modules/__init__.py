"""LightningModules: the plain backbone, the search stage, the supernet, the retrained groups and their router."""

from .backbone_module import BackboneModule
from .base import CTRModule, NonFiniteLossError
from .config import BackboneConfig
from .linear_router import LinearRouter
from .retrain_module import RetrainModule
from .router import Router
from .search_module import SearchModule
from .supernet_module import FINETUNE_SCOPES, FinetuneScope, SubnetScore, SupernetModule

__all__ = ["FINETUNE_SCOPES", "BackboneConfig", "BackboneModule", "CTRModule", "FinetuneScope", "LinearRouter",
           "NonFiniteLossError", "RetrainModule", "Router", "SearchModule", "SubnetScore", "SupernetModule"]
