"""PIM co-design: device presets, configuration space and an analytic (not simulated) cost model."""
from .config import (BYTES_PER_ELEMENT, HBM2_HOST, HBM_PIM, HOST_CACHE_LINE_BYTES, HOST_CPU_DRAM, PRESETS, RECNMP,
                     UPMEM_DIMM, DevicePreset, ModelSpec, PIMConfig, access_stats, get_preset, zipf_hot_share)
from .cost_model import CostReport, cache_hit_rate, compare, estimate

__all__ = [
    "BYTES_PER_ELEMENT", "HOST_CACHE_LINE_BYTES", "DevicePreset", "HOST_CPU_DRAM", "HBM2_HOST", "UPMEM_DIMM",
    "HBM_PIM", "RECNMP", "PRESETS", "get_preset", "PIMConfig", "ModelSpec", "access_stats", "zipf_hot_share",
    "CostReport", "estimate", "compare", "cache_hit_rate",
]
