"""CTR data: schema, readers of the original formats, encoders, on-disk cache, batches, DataModule."""

from .config import DataConfig
from .datamodule import CTRDataModule, split_rows
from .encoders import EncodedColumns, FeatureEncoder
from .readers import FORMATS, read_data
from .schema import DataFormatError, MultiValuedField, RawColumns, Schema
from .synthetic import SyntheticCTR
from .synthetic_config import SyntheticConfig

__all__ = ["CTRDataModule", "DataConfig", "DataFormatError", "EncodedColumns", "FORMATS", "FeatureEncoder",
           "MultiValuedField", "RawColumns", "Schema", "SyntheticCTR", "SyntheticConfig", "read_data", "split_rows"]
