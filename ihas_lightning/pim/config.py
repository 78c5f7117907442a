"""PIM configuration space: device presets, the served model's shape and a placement/precision config.

Every number below is a named constant with where it comes from.  "ASSUMPTION" marks numbers we chose
(no public figure for exactly this quantity); "CALIBRATED" marks numbers chosen so that the analytic model
reproduces a published end-result (documented at the constant).  The cost model lives in ``cost_model``.
See docs/design.md#6-pim-co-design.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import numpy as np

from ..flops import flops_breakdown

__all__ = ["BYTES_PER_ELEMENT", "HOST_CACHE_LINE_BYTES", "DevicePreset", "HOST_CPU_DRAM", "HBM2_HOST", "UPMEM_DIMM",
           "HBM_PIM", "RECNMP", "PRESETS", "get_preset", "PIMConfig", "ModelSpec", "access_stats", "zipf_hot_share"]

Precision = Literal["fp32", "fp16", "int8"]
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}
#: x86 cache line = DRAM burst of a 64-bit DDR4 channel (BL8 x 8 B); the host never moves less per access.
HOST_CACHE_LINE_BYTES = 64

# ---------------------------------------------------------------- public figures (with sources) ----
DDR4_3200_CHANNEL_BPS = 3200e6 * 8  # 25.6 GB/s: 3200 MT/s x 64-bit bus (JEDEC JESD79-4 DDR4 speed bins)
XEON_8380_CHANNELS = 8  # Intel Xeon Platinum 8380 (Ice Lake-SP): 8 DDR4-3200 channels per socket (Intel ARK)
# 5.9 TFLOP/s fp32 peak = 40 cores x 2.3 GHz x 64 FLOP/cycle (2 AVX-512 FMA units), Intel ARK figures.
XEON_8380_PEAK_FLOPS = 40 * 2.3e9 * 64
# Off-chip DRAM access: 640 pJ per 32-bit word = 20 pJ/bit (Horowitz, "Computing's energy problem",
# ISSCC 2014, 45 nm table; reproduced in Han et al., "EIE", ISCA 2016).
DRAM_PJ_PER_BYTE = 640.0 / 4
FP32_ADD_PJ, FP32_MUL_PJ = 0.9, 3.7  # Horowitz ISSCC 2014 (45 nm)
FP16_ADD_PJ, FP16_MUL_PJ = 0.4, 1.1  # Horowitz ISSCC 2014 (45 nm)
# Host caches. A row that sits in the last-level cache never reaches DRAM: PIM pays only for tables that do not
# fit there. Xeon Platinum 8380: 60 MB shared L3 (Intel ARK). NVIDIA V100: 6 MB L2 (Volta whitepaper, 2017).
XEON_8380_LLC_BYTES = 60 * 2**20
V100_L2_BYTES = 6 * 2**20
SRAM_1MB_PJ_PER_BYTE = 100.0 / 8  # 64-bit read from a 1 MB SRAM: 100 pJ (Horowitz ISSCC 2014; a 60 MB L3 costs more)

# UPMEM (Gomez-Luna et al., "Benchmarking a New Paradigm: Experimental Analysis and Characterization of a
# Real Processing-in-Memory System", IEEE Access 10, 2022; arXiv 2105.03814):
UPMEM_MRAM_BYTES = 64 * 2**20  # 64 MB MRAM bank per DPU
UPMEM_DPU_HZ = 350e6  # DPU clock of the 2,556-DPU system
UPMEM_MRAM_BPS = 2 * UPMEM_DPU_HZ  # 0.7 GB/s: MRAM DMA beta = 0.5 cycle/B (latency = alpha + beta*size)
UPMEM_MRAM_ALPHA_CYCLES = 77  # fixed cycles per MRAM read DMA (alpha of the latency model above)
UPMEM_DMA_MIN_BYTES = 8  # MRAM<->WRAM DMA transfers are 8-byte aligned multiples of 8 B (8..2048 B)
UPMEM_DPUS_PER_SERVER = 2560  # 20 DIMMs x 2 ranks x 64 DPUs (2,556 usable in the paper's system)
UPMEM_DPUS_PER_RANK = 64
UPMEM_DPU_TO_CPU_BPS_PER_RANK = 4.74e9  # parallel DPU->CPU transfer, one rank (recalled; verify, Fig. 10)
UPMEM_FP32_ADD_OPS = 4.91e6  # emulated fp32 ADD throughput per DPU, 16 tasklets (recalled; verify)
UPMEM_INT32_ADD_OPS = 58.56e6  # native 32-bit integer ADD throughput per DPU (recalled; verify)

# Samsung HBM-PIM / Aquabolt-XL (Kwon et al., ISSCC 2021, "A 20nm 6GB Function-In-Memory DRAM, Based on
# HBM2 with a 1.2TFLOPS Programmable Computing Unit ..."; Lee et al., ISCA 2021, "Hardware Architecture and
# Software Stack for PIM Based on Commercial DRAM Technology"; Samsung press release 17 Feb 2021:
# "more than twice the system performance ... reducing energy consumption by more than 70%").
HBM_PIM_STACK_BYTES = 6 * 2**30  # 6 GB stack
HBM_PIM_STACK_FLOPS = 1.2e12  # 1.2 TFLOPS fp16 (300 MHz PCUs, 16-lane fp16 SIMD)
HBM2_STACK_BPS = 2.4e9 * 1024 / 8  # 307.2 GB/s: 2.4 Gb/s/pin x 1024-bit interface (Aquabolt HBM2)
HBM_PIM_INTERNAL_BW_FACTOR = 4  # bank-level parallelism: PCUs see 4x the external bandwidth (ISSCC 2021)
HBM_PIM_UNITS = 128  # PCUs per stack: 1.2 TFLOPS / (16 lanes x 2 FLOP x 300 MHz) = 125 -> 128 (derived)
HBM2_PJ_PER_BYTE = 3.9 * 8  # ~3.9 pJ/bit HBM2 access incl. I/O (O'Connor et al., "Fine-Grained DRAM", MICRO 2017)
HBM2_ACCESS_BYTES = 32  # HBM2 pseudo-channel access: 64-bit x BL4 = 32 B (JEDEC JESD235)

# RecNMP (Ke et al., ISCA 2020, "RecNMP: Accelerating Personalized Recommendation with Near-Memory
# Processing"): rank-level processing units in the DIMM buffer chip; "up to 9.8x memory latency speedup",
# "45.8% memory energy savings", "4.2x throughput".
RECNMP_MAX_LATENCY_SPEEDUP = 9.8
RECNMP_MEMORY_ENERGY_SAVING = 0.458
RECNMP_RANKS_PER_CHANNEL = 8  # largest configuration studied: 4 DIMMs x 2 ranks per channel

# ---------------------------------------------------------------- our assumptions ------------------
HOST_RANDOM_ACCESS_EFFICIENCY = 0.5  # ASSUMPTION: share of peak DDR bandwidth reached by random 64 B reads
HOST_GEMM_EFFICIENCY = 0.2  # ASSUMPTION: share of AVX-512 peak reached by small-batch MLP inference
HOST_LLC_BPS = 40 * 2.3e9 * 16  # ASSUMPTION: 16 B/cycle of L3 reads per core x 40 cores (~1.5 TB/s)
V100_L2_BPS = 2.1e12  # V100 L2 bandwidth measured by Jia et al., "Dissecting the NVIDIA Volta GPU" 2018 (recalled)
HOST_PJ_PER_FLOP = 10.0  # ASSUMPTION: vector FLOP incl. amortized instruction overhead (Horowitz: ~70 pJ/scalar instr.)
DRAM_STATIC_W_PER_CHANNEL = 3.0  # ASSUMPTION: background+refresh of 2 RDIMMs; CPU idle power not attributed
UPMEM_MRAM_PJ_PER_BYTE = 50.0  # ASSUMPTION: in-chip bank access, no off-chip I/O (~1/3 of DRAM_PJ_PER_BYTE)
UPMEM_PJ_PER_OP = 150.0  # ASSUMPTION: emulated fp op = tens of DPU instructions
UPMEM_STATIC_W_PER_DPU = 0.012  # ASSUMPTION: ~1.5 W background per 128-DPU DIMM
UPMEM_LAUNCH_S = 50e-6  # ASSUMPTION: DPU program launch + synchronization per batch
HBM_PIM_PJ_PER_BYTE = 0.3 * HBM2_PJ_PER_BYTE  # CALIBRATED: in-bank access ~30% of an external HBM2 access,
#   so that a memory-bound op shows Samsung's ~70% energy reduction (no public per-bit breakdown).
HBM_PIM_MODE_SWITCH_S = 1e-6  # ASSUMPTION: PIM mode entry/exit per batch
V100_FP32_FLOPS = 15.7e12  # NVIDIA V100 SXM2 datasheet, fp32 peak (processor in front of plain HBM2)
RECNMP_PJ_PER_BYTE = (1 - RECNMP_MEMORY_ENERGY_SAVING) * DRAM_PJ_PER_BYTE  # CALIBRATED to RecNMP's 45.8%:
#   a rank-local access skips the channel I/O, which is then the remaining share of a host access:
RECNMP_LINK_PJ_PER_BYTE = RECNMP_MEMORY_ENERGY_SAVING * DRAM_PJ_PER_BYTE  # results over the channel (same split)
RECNMP_PU_FLOPS = 12.8e9  # ASSUMPTION: sized to sum-pool at a rank's 25.6 GB/s (SLS = 0.25 FLOP/B) with margin
RECNMP_PACKET_S = 1e-6  # ASSUMPTION: NMP instruction packet issue per batch
RANK_BYTES = 16 * 2**30  # ASSUMPTION: one rank of a 32 GB dual-rank RDIMM
CHANNEL_BYTES = 64 * 2**30  # ASSUMPTION: 2 x 32 GB RDIMM per host channel


@dataclass(frozen=True)
class DevicePreset:
    """One memory device kind; a *unit* is its smallest independent memory+compute slice."""

    name: str
    capacity_bytes_per_unit: float
    bandwidth_bps_per_unit: float  # local (internal) memory bandwidth of one unit
    default_num_units: int
    flops_per_unit: float  # fp32/fp16 throughput of one unit (host: share of the socket)
    int8_ops_per_unit: float
    energy_pj_per_byte: float  # moving one byte from the unit's memory to its compute
    energy_pj_per_flop: float
    host_link_bps_per_unit: float  # unit -> host results path (host preset: unused)
    link_energy_pj_per_byte: float
    offload_overhead_s: float  # fixed cost per batch when the device is used
    access_granularity_bytes: int  # the least a single access moves
    per_access_overhead_s: float = 0.0  # fixed latency per access that parallelism does not hide
    random_access_efficiency: float = 1.0  # effective / peak bandwidth for row gathers
    static_power_w_per_unit: float = 0.0
    compute_precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    is_host: bool = False
    source: str = ""
    cache_bytes: float = 0.0  # host: last-level cache that can hold embedding rows (PIM presets: none modeled)
    cache_bandwidth_bps: float = 0.0
    cache_energy_pj_per_byte: float = 0.0

    @property
    def aggregate_bandwidth_bps(self) -> float:
        return self.bandwidth_bps_per_unit * self.default_num_units


HOST_CPU_DRAM = DevicePreset(
    "host_cpu_dram", CHANNEL_BYTES, DDR4_3200_CHANNEL_BPS, XEON_8380_CHANNELS,
    XEON_8380_PEAK_FLOPS * HOST_GEMM_EFFICIENCY / XEON_8380_CHANNELS,
    XEON_8380_PEAK_FLOPS * HOST_GEMM_EFFICIENCY / XEON_8380_CHANNELS,
    DRAM_PJ_PER_BYTE, HOST_PJ_PER_FLOP, DDR4_3200_CHANNEL_BPS, 0.0, 0.0, HOST_CACHE_LINE_BYTES,
    random_access_efficiency=HOST_RANDOM_ACCESS_EFFICIENCY, static_power_w_per_unit=DRAM_STATIC_W_PER_CHANNEL,
    is_host=True, source="Xeon 8380 + 8x DDR4-3200; unit = one channel; Horowitz ISSCC 2014 energy",
    cache_bytes=XEON_8380_LLC_BYTES, cache_bandwidth_bps=HOST_LLC_BPS, cache_energy_pj_per_byte=SRAM_1MB_PJ_PER_BYTE)
HBM2_HOST = DevicePreset(
    "hbm2_host", 8 * 2**30, HBM2_STACK_BPS, 1, V100_FP32_FLOPS * HOST_GEMM_EFFICIENCY,
    V100_FP32_FLOPS * HOST_GEMM_EFFICIENCY, HBM2_PJ_PER_BYTE, HOST_PJ_PER_FLOP, HBM2_STACK_BPS,
    0.0, 0.0, HBM2_ACCESS_BYTES, random_access_efficiency=HOST_RANDOM_ACCESS_EFFICIENCY, is_host=True,
    source="processor + plain HBM2 stack (the HBM-PIM baseline); O'Connor et al. MICRO 2017 energy",
    cache_bytes=V100_L2_BYTES, cache_bandwidth_bps=V100_L2_BPS, cache_energy_pj_per_byte=SRAM_1MB_PJ_PER_BYTE)
UPMEM_DIMM = DevicePreset(
    "upmem", UPMEM_MRAM_BYTES, UPMEM_MRAM_BPS, UPMEM_DPUS_PER_SERVER, UPMEM_FP32_ADD_OPS, UPMEM_INT32_ADD_OPS,
    UPMEM_MRAM_PJ_PER_BYTE, UPMEM_PJ_PER_OP, UPMEM_DPU_TO_CPU_BPS_PER_RANK / UPMEM_DPUS_PER_RANK,
    DRAM_PJ_PER_BYTE, UPMEM_LAUNCH_S, UPMEM_DMA_MIN_BYTES,
    per_access_overhead_s=UPMEM_MRAM_ALPHA_CYCLES / UPMEM_DPU_HZ, static_power_w_per_unit=UPMEM_STATIC_W_PER_DPU,
    source="Gomez-Luna et al., IEEE Access 2022; unit = one DPU")
HBM_PIM = DevicePreset(
    "hbm_pim", HBM_PIM_STACK_BYTES / HBM_PIM_UNITS, HBM2_STACK_BPS * HBM_PIM_INTERNAL_BW_FACTOR / HBM_PIM_UNITS,
    HBM_PIM_UNITS, HBM_PIM_STACK_FLOPS / HBM_PIM_UNITS, 0.0, HBM_PIM_PJ_PER_BYTE, FP16_ADD_PJ + FP16_MUL_PJ,
    HBM2_STACK_BPS / HBM_PIM_UNITS, HBM2_PJ_PER_BYTE, HBM_PIM_MODE_SWITCH_S, HBM2_ACCESS_BYTES,
    random_access_efficiency=HOST_RANDOM_ACCESS_EFFICIENCY, compute_precisions=("fp16",),
    source="Kwon et al. ISSCC 2021; Lee et al. ISCA 2021; unit = one PCU (2 banks)")
RECNMP = DevicePreset(
    "recnmp", RANK_BYTES, DDR4_3200_CHANNEL_BPS, RECNMP_RANKS_PER_CHANNEL * XEON_8380_CHANNELS,
    RECNMP_PU_FLOPS, RECNMP_PU_FLOPS, RECNMP_PJ_PER_BYTE, FP32_ADD_PJ,
    DDR4_3200_CHANNEL_BPS / RECNMP_RANKS_PER_CHANNEL, RECNMP_LINK_PJ_PER_BYTE, RECNMP_PACKET_S, HOST_CACHE_LINE_BYTES,
    random_access_efficiency=HOST_RANDOM_ACCESS_EFFICIENCY,
    source="Ke et al. ISCA 2020; unit = one rank (DDR4-3200 assumed, paper used DDR4-2400)")

PRESETS: dict[str, DevicePreset] = {p.name: p for p in (HOST_CPU_DRAM, HBM2_HOST, UPMEM_DIMM, HBM_PIM, RECNMP)}


def get_preset(name: str) -> DevicePreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown device preset {name!r}; known: {sorted(PRESETS)}") from None


Placement = Literal["host", "pim"]
PlacementPolicy = Literal["all_pim", "all_host", "top_k"]


@dataclass(frozen=True)
class PIMConfig:
    """Where each embedding table lives and how the PIM device is used.

    ``table_placement`` is a tuple of "host"/"pim" per field, or a policy: "all_pim", "all_host", or
    "top_k" (the ``pim_top_k`` largest tables, by bytes, in PIM).  ``host`` names the preset that serves
    host-placed tables and runs the dense part (HOST_CPU_DRAM unless the system is e.g. GPU + HBM2).
    ``host_cache_bytes``: the host cache that holds embedding rows (None: the host preset's last-level cache;
    0: none, every host lookup reads DRAM, as a table many times the cache does).
    """

    device: str = "upmem"
    num_units: int = UPMEM_DPUS_PER_SERVER
    table_placement: tuple[Placement, ...] | PlacementPolicy = "all_pim"
    precision: Precision = "fp32"
    partitioning: Literal["table", "row"] = "table"
    pooling_in_memory: bool = True
    interaction_in_memory: bool = False
    batch_size: int = 256
    pim_top_k: int = 0
    host: str = "host_cpu_dram"
    host_cache_bytes: float | None = None

    def __post_init__(self) -> None:
        dev, host = get_preset(self.device), get_preset(self.host)
        if not host.is_host:
            raise ValueError(f"host={self.host!r} is a PIM device, not a host preset")
        if not isinstance(self.num_units, int) or self.num_units < 1:
            raise ValueError(f"num_units must be a positive int, got {self.num_units!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.precision not in BYTES_PER_ELEMENT:
            raise ValueError(f"precision must be one of {sorted(BYTES_PER_ELEMENT)}, got {self.precision!r}")
        if self.partitioning not in ("table", "row"):
            raise ValueError(f"partitioning must be 'table' or 'row', got {self.partitioning!r}")
        if self.host_cache_bytes is not None and not self.host_cache_bytes >= 0:
            raise ValueError(f"host_cache_bytes must be None or >= 0, got {self.host_cache_bytes!r}")
        tp = self.table_placement
        if isinstance(tp, str):
            if tp not in ("all_pim", "all_host", "top_k"):
                raise ValueError(f"table_placement policy must be all_pim/all_host/top_k, got {tp!r}")
            if tp == "top_k" and self.pim_top_k < 0:
                raise ValueError("pim_top_k must be >= 0")
        else:
            object.__setattr__(self, "table_placement", tuple(tp))
            bad = [p for p in self.table_placement if p not in ("host", "pim")]
            if bad:
                raise ValueError(f"table_placement entries must be 'host' or 'pim', got {bad}")
        uses_pim = tp != "all_host" and not (isinstance(tp, tuple) and "pim" not in tp)
        if dev.is_host and uses_pim:
            raise ValueError(f"device {self.device!r} is a host preset: use table_placement='all_host'")
        if self.interaction_in_memory and not self.pooling_in_memory:
            raise ValueError("interaction_in_memory needs pooling_in_memory (it consumes pooled vectors)")

    @classmethod
    def baseline(cls, batch_size: int = 256, host: str = "host_cpu_dram",
                 host_cache_bytes: float | None = None) -> "PIMConfig":
        """Host-only reference: fp32 tables in host memory (DDR4 by default), everything on the host processor."""
        return cls(device=host, num_units=get_preset(host).default_num_units, table_placement="all_host",
                   precision="fp32", partitioning="table", pooling_in_memory=False, interaction_in_memory=False,
                   batch_size=batch_size, host=host, host_cache_bytes=host_cache_bytes)

    @classmethod
    def for_device(cls, device: str, **kw) -> "PIMConfig":
        """A config with the preset's default number of units."""
        kw.setdefault("num_units", get_preset(device).default_num_units)
        return cls(device=device, **kw)

    def with_(self, **kw) -> "PIMConfig":
        return replace(self, **kw)

    def placement_for(self, spec: "ModelSpec") -> tuple[Placement, ...]:
        """Resolve a policy into one placement per field (dropped fields report 'host', they hold nothing)."""
        n, tp = len(spec.embedding_dims), self.table_placement
        if isinstance(tp, tuple):
            if len(tp) != n:
                raise ValueError(f"table_placement has {len(tp)} entries but the spec has {n} fields")
            return tp
        if tp == "all_pim":
            return ("pim",) * n
        if tp == "all_host":
            return ("host",) * n
        sizes = [v * d for v, d in zip(spec.vocab_sizes, spec.embedding_dims)]
        top = set(sorted(range(n), key=lambda i: (-sizes[i], i))[: self.pim_top_k])
        return tuple("pim" if i in top else "host" for i in range(n))


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a served CTR model: one embedding table per sparse field, optional FM/cross, a DNN."""

    embedding_dims: tuple[int, ...]  # 0 = field dropped
    vocab_sizes: tuple[int, ...]
    lookups_per_sample: tuple[float, ...] | None = None  # default 1 per field (one-hot)
    hot_share: tuple[float, ...] | None = None  # share of lookups hitting the top 1% rows; None = uniform
    dense_dim: int = 0
    dnn_hidden: tuple[int, ...] = (256, 128)
    interaction: Literal["fm", "cross", "none"] = "fm"
    cross_layers: int = 0
    field_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass normalization)
        dims, vocab = tuple(int(d) for d in self.embedding_dims), tuple(int(v) for v in self.vocab_sizes)
        n = len(dims)
        if len(vocab) != n:
            raise ValueError(f"{n} embedding dims but {len(vocab)} vocabulary sizes")
        if any(d < 0 for d in dims) or any(v < 1 for v in vocab):
            raise ValueError("embedding dims must be >= 0 and vocabulary sizes >= 1")
        look = (1.0,) * n if self.lookups_per_sample is None else tuple(float(x) for x in self.lookups_per_sample)
        hot = None if self.hot_share is None else tuple(float(x) for x in self.hot_share)
        names = tuple(f"C{i + 1}" for i in range(n)) if self.field_names is None else tuple(self.field_names)
        for label, seq in (("lookups_per_sample", look), ("hot_share", hot), ("field_names", names)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{label} has {len(seq)} entries, expected {n}")
        if any(x < 0 for x in look) or (hot is not None and any(not 0 <= x <= 1 for x in hot)):
            raise ValueError("lookups_per_sample must be >= 0 and hot_share in [0, 1]")
        if self.interaction not in ("fm", "cross", "none"):
            raise ValueError(f"interaction must be 'fm', 'cross' or 'none', got {self.interaction!r}")
        if self.cross_layers < 0 or (self.interaction != "cross" and self.cross_layers):
            raise ValueError("cross_layers must be >= 0 and only set with interaction='cross'")
        if self.dense_dim < 0 or any(h < 1 for h in self.dnn_hidden):
            raise ValueError("dense_dim must be >= 0 and DNN widths >= 1")
        for k, v in (("embedding_dims", dims), ("vocab_sizes", vocab), ("lookups_per_sample", look),
                     ("hot_share", hot), ("field_names", names), ("dnn_hidden", tuple(self.dnn_hidden))):
            set_(k, v)

    @property
    def active_fields(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.embedding_dims) if d > 0)

    @property
    def concat_dim(self) -> int:
        """Width of [dense | all embeddings], the input of the DNN and of the cross network."""
        return self.dense_dim + sum(self.embedding_dims)

    def embedding_params(self) -> int:
        return sum(v * d for v, d in zip(self.vocab_sizes, self.embedding_dims))

    def flops_breakdown(self) -> dict[str, float]:
        """FLOPs per sample by stage, as :func:`ihas_lightning.flops.flops_breakdown` counts this shape."""
        return flops_breakdown(self.embedding_dims, dense_dim=self.dense_dim,
                               lookups_per_sample=self.lookups_per_sample, dnn_hidden=self.dnn_hidden,
                               interaction=self.interaction, cross_layers=self.cross_layers)

    def flops_per_sample(self) -> float:
        return float(sum(self.flops_breakdown().values()))


def access_stats(ids: np.ndarray, vocab_sizes: Sequence[int], hot_fraction: float = 0.01) -> dict[str, tuple]:
    """Measure per-field access statistics from an (N, F) integer id matrix (negative id = missing).

    Returns ``lookups_per_sample`` (share of present ids per field: 1.0 for one-hot fields) and
    ``hot_share`` (share of lookups that hit the ``hot_fraction`` most frequent rows, at least one row).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != len(vocab_sizes):
        raise ValueError(f"ids must be (N, {len(vocab_sizes)}), got {ids.shape}")
    looks, hots = [], []
    for f, vocab in enumerate(vocab_sizes):
        col = ids[:, f]
        col = col[col >= 0]
        looks.append(float(col.size / max(ids.shape[0], 1)))
        if col.size == 0:
            hots.append(0.0)
            continue
        if col.max() >= vocab:
            raise ValueError(f"field {f}: id {int(col.max())} >= vocabulary size {vocab}")
        counts = np.sort(np.bincount(col, minlength=vocab))[::-1]
        k = max(1, math.ceil(hot_fraction * vocab))
        hots.append(float(counts[:k].sum() / col.size))
    return {"lookups_per_sample": tuple(looks), "hot_share": tuple(hots)}


def zipf_hot_share(vocab: int, exponent: float = 1.1, top: float = 0.01) -> float:
    """Share of lookups on the ``top`` most frequent rows (at least one) when row k is looked up with
    probability proportional to k**-exponent: an access statistic for tables too big for the data at hand."""
    if vocab < 1 or exponent <= 0 or not 0 < top <= 1:
        raise ValueError(f"need vocab >= 1, exponent > 0 and top in (0, 1], got {vocab}, {exponent}, {top}")
    return _zipf_mass(max(1, math.ceil(top * vocab)), exponent) / _zipf_mass(vocab, exponent)


def _zipf_mass(n: int, s: float, exact: int = 10_000) -> float:
    """sum_{k=1..n} k**-s: exact up to ``exact`` terms, the midpoint integral of the rest (error ~1e-9)."""
    m = min(n, exact)
    head = float(np.sum(np.arange(1, m + 1, dtype=np.float64) ** -s))
    if n == m:
        return head
    a, b = m + 0.5, n + 0.5
    return head + (math.log(b / a) if s == 1 else (b ** (1 - s) - a ** (1 - s)) / (1 - s))
