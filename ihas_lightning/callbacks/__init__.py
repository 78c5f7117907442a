"""Lightning callbacks: gate schedules, gate statistics, supernet sampling; one public callback per file, and
the loader of callback sets from YAML presets (``presets.py``)."""

from .dimension_search import DimensionSearch
from .gate_statistics import GateStatisticsLogger
from .optuna_pruning import OptunaPruning
from .presets import load_callbacks, preset_names
from .regularizer_warmup import RegularizerWarmup
from .searched_checkpoint import BestSearchedCheckpoint
from .stateful import MissingCallbackStateError, StatefulCallback
from .supernet_sampler import SupernetSampler
from .temperature_annealing import TemperatureAnnealing
from .throughput import ThroughputMeter

__all__ = ["BestSearchedCheckpoint", "DimensionSearch", "GateStatisticsLogger", "MissingCallbackStateError",
           "OptunaPruning", "RegularizerWarmup", "StatefulCallback", "SupernetSampler", "TemperatureAnnealing",
           "ThroughputMeter", "load_callbacks", "preset_names"]
