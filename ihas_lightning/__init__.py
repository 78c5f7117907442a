"""ihas-lightning: instance-wise embedding-dimension search (iHAS), supernet sampling and PIM co-design for
DeepCTR-Torch models, as LightningModules and callbacks for an ordinary ``pytorch_lightning.Trainer``."""

from .backbones import CTRBackbone, build_backbone
from .clustering import ClusterConfig, ClusterResult
from .data import CTRDataModule, Schema
from .gates import GateConfig, InstanceGates
from .model import IHASModel
from .modules import BackboneModule, RetrainModule, SearchModule, SupernetModule
from .supernet import SubArchitecture, SupernetConfig, SupernetMasks

__version__ = "0.1.0"

__all__ = [
    "BackboneModule",
    "CTRBackbone",
    "CTRDataModule",
    "ClusterConfig",
    "ClusterResult",
    "GateConfig",
    "IHASModel",
    "InstanceGates",
    "RetrainModule",
    "Schema",
    "SearchModule",
    "SubArchitecture",
    "SupernetConfig",
    "SupernetMasks",
    "SupernetModule",
    "build_backbone",
    "__version__",
]
