"""Lightning callbacks: gate schedules, gate statistics, supernet sampling; one public callback per file."""

from .gate_statistics import GateStatisticsLogger
from .regularizer_warmup import RegularizerWarmup
from .supernet_sampler import SupernetSampler
from .temperature_annealing import TemperatureAnnealing

__all__ = ["GateStatisticsLogger", "RegularizerWarmup", "SupernetSampler", "TemperatureAnnealing"]
