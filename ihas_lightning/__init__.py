"""ihas-lightning: instance-wise embedding-dimension search (iHAS), supernet sampling and PIM co-design for
DeepCTR-Torch models, as LightningModules and callbacks for an ordinary ``pytorch_lightning.Trainer``."""

from .backbones import CTRBackbone, build_backbone
from .clustering import ClusterConfig, ClusterResult
from .data import CTRDataModule, DataConfig, Schema
from .gates import GateConfig, InstanceGates
from .model import IHASModel
from .modules import BackboneConfig, BackboneModule, RetrainModule, SearchModule, SupernetModule
from .pipeline import run_pipeline
from .run_config import RunConfig
from .subarchitecture import SubArchitecture, SupernetConfig
from .supernet import SupernetMasks

__version__ = "0.1.0"

__all__ = [
    "BackboneConfig",
    "BackboneModule",
    "CTRBackbone",
    "CTRDataModule",
    "ClusterConfig",
    "ClusterResult",
    "DataConfig",
    "GateConfig",
    "IHASModel",
    "InstanceGates",
    "RetrainModule",
    "RunConfig",
    "Schema",
    "SearchModule",
    "SubArchitecture",
    "SupernetConfig",
    "SupernetMasks",
    "SupernetModule",
    "build_backbone",
    "run_pipeline",
    "__version__",
]
