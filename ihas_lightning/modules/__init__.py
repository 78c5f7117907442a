"""LightningModules: the plain backbone, the search stage, the supernet, the retrained groups and their router."""

from .backbone_module import BackboneModule
from .base import CTRModule, NonFiniteLossError
from .config import BackboneConfig
from .first_order_refit import FirstOrderRefit
from .linear_router import LinearRouter
from .retrain_module import RetrainModule
from .router import Router
from .search_module import SearchModule
from .supernet_module import (FINETUNE_SCOPES, REFIT_FIELDS, REFIT_PRIOR, REFIT_ROWS, REFIT_SWEEPS, FinetuneScope,
                              RefitFields, SubnetScore, SupernetModule)

__all__ = ["FINETUNE_SCOPES", "REFIT_FIELDS", "REFIT_PRIOR", "REFIT_ROWS", "REFIT_SWEEPS", "BackboneConfig",
           "BackboneModule", "CTRModule", "FinetuneScope", "FirstOrderRefit", "LinearRouter", "NonFiniteLossError",
           "RefitFields", "RetrainModule", "Router", "SearchModule", "SubnetScore", "SupernetModule"]
