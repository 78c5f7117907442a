"""Analytic cost model of CTR inference with embedding tables in host DRAM or in a PIM device.

This is an ANALYTIC MODEL, NOT A SIMULATOR: a handful of closed-form terms (bytes / bandwidth, FLOPs /
throughput, fixed overheads, bytes x energy) that rank configurations against each other.  Its absolute
numbers are rough; use ratios against a baseline (``compare``).

Per batch of B samples:

* Embedding gather.  Each lookup of a D-dim row at precision p moves ``ceil(D*bytes(p) / g) * g`` bytes,
  where g is the access granularity of the memory that serves it.  On host DRAM g = 64 B (one cache line:
  a 16-dim fp32 row is exactly one line, but a 4-dim int8 row still moves a whole 64 B line); on UPMEM MRAM
  g = 8 B (DMA granularity), on HBM2 32 B.  This granularity is why PIM wins on small rows.  Host time =
  host bytes / (channels x channel bandwidth x random-access efficiency), for the lookups that miss the host's
  last-level cache; hits are read at the cache's bandwidth and energy.  The cache (``host_cache_bytes``, by
  default the host preset's LLC) holds the same share of every host-placed table (share = cache / host table
  bytes in cache lines, at most 1), hottest rows first: a table's hit rate is that share under uniform access,
  and with ``hot_share`` h (lookups on its top 1% rows) h*share/1% up to 1%, then h + (1-h)*(share-1%)/99%.
  So tables that fit the cache cost the host little, and PIM pays only as they outgrow it.  PIM time = the
  busiest unit's accesses x per-access latency (UPMEM's MRAM DMA alpha) + its bytes / (unit bandwidth x efficiency).
  Table-wise partitioning puts each whole table on one unit (greedy: largest table first, onto the least
  loaded unit), so the busiest unit sets the time; row-wise splits every table evenly over all units with
  rows dealt round-robin, and the busiest unit receives ``hot/min(U, hot rows) + (1-hot)/U`` of a table's
  lookups (``hot`` = share of lookups on the top 1% rows; uniform when unknown).
* Pooling (sum of a field's L rows) runs on the host, or in memory when ``pooling_in_memory``; the in-memory
  unit time is max(memory, compute) (roofline overlap).
* Transfer to the host over the device's host link: pooled vectors (one per table; one partial sum per unit
  touched under row-wise, expected U*(1-(1-1/U)^L) of them; int8 sums come back as fp32), or the raw rows
  when pooling stays on the host.  So row-wise pooling over many units returns many partial sums.
  Interaction in memory additionally sends the pooled vectors back down to the unit that computes it.
* Interaction (FM / cross) and the DNN run on the host at its effective FLOP rate (or interaction on PIM).
* latency = offload overhead + max(host gather, PIM gather + transfer) + interaction + DNN.
* energy = bytes x pJ/B (memory) + FLOPs x pJ/FLOP + transfer bytes x link pJ/B + static power x latency.
  Static power counts memory-side background power only (DRAM channels, PIM units), not the CPU's idle power.
* memory = table bytes per unit; infeasible when any unit (or the host) exceeds its capacity.

Left out: cache contention with the DNN and other data, private caches (the LLC alone is modeled), PIM-side
caches (RecNMP's RankCache, hot-row replication), DRAM row-buffer hits and
bank conflicts, refresh, contention between host and PIM traffic on shared channels, host-PIM
synchronization and scheduling detail beyond a fixed per-batch overhead, inter-unit load beyond the busiest
unit, DMA splitting of rows larger than one transfer, row alignment, int8 per-row scale/bias, first-order
(linear) logits, biases and activations, DNN weight traffic, data layout/transposition costs, and power
management.  Several device constants are our assumptions or calibrations; see ``config``.
See docs/design.md#6-pim-co-design.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field
from typing import Mapping

from .config import BYTES_PER_ELEMENT, ModelSpec, PIMConfig, get_preset

__all__ = ["CostReport", "estimate", "compare", "cache_hit_rate"]


@dataclass(frozen=True)
class CostReport:
    latency_s_per_batch: float
    energy_j_per_sample: float
    flops_per_sample: float
    bytes_per_sample: float  # bytes moved: host gather + PIM gather + PIM->host transfer
    memory_bytes_per_unit: float  # largest table footprint of one PIM unit (host-only: of one host channel)
    feasible: bool
    reasons: tuple[str, ...]
    breakdown: Mapping[str, float] = field(hash=False)  # seconds per batch; sums to the latency
    energy_breakdown: Mapping[str, float] = field(hash=False)  # joules per sample; sums to the energy
    # bytes per sample; sums to bytes_per_sample: host_gather (host DRAM), host_cache (host LLC hits),
    # pim_gather, transfer
    bytes_breakdown: Mapping[str, float] = field(hash=False)

    def to_dict(self) -> dict:
        return asdict(self)


def _ceil_to(x: float, g: int) -> int:
    return int(math.ceil(x / g) * g) if x > 0 else 0


def _fmt(b: float) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB"


def _assign_tables(sizes: dict[int, float], units: int) -> list[list[int]]:
    """Greedy longest-first placement of whole tables onto the least loaded unit (by bytes; ties: lowest unit).
    Units left empty are not listed (they add no load)."""
    heap, assigned = [(0.0, u) for u in range(min(units, len(sizes)))], {}
    for i in sorted(sizes, key=lambda k: (-sizes[k], k)):
        load, u = heapq.heappop(heap)
        heapq.heappush(heap, (load + sizes[i], u))
        assigned.setdefault(u, []).append(i)
    return list(assigned.values())


def cache_hit_rate(share: float, vocab: int, hot_share: float | None = None) -> float:
    """Share of a table's lookups that hit a cache holding ``share`` of its rows, the most looked-up first:
    ``share`` under uniform access; with ``hot_share`` (lookups on the top 1% rows) piecewise linear through
    (1%, hot_share) and (1, 1)."""
    share = min(max(share, 0.0), 1.0)
    if share >= 1.0 or hot_share is None:
        return share
    top = max(1, math.ceil(0.01 * vocab)) / vocab
    if top >= 1.0:
        return share
    if share <= top:
        return hot_share * share / top
    return hot_share + (1.0 - hot_share) * (share - top) / (1.0 - top)


def estimate(spec: ModelSpec, config: PIMConfig) -> CostReport:
    """Latency, energy, FLOPs, bytes and memory of serving ``spec`` under ``config`` (see module doc)."""
    dev, host = get_preset(config.device), get_preset(config.host)
    B, U, bpe = config.batch_size, config.num_units, BYTES_PER_ELEMENT[config.precision]
    place, names = config.placement_for(spec), spec.field_names
    dims, vocab, looks = spec.embedding_dims, spec.vocab_sizes, spec.lookups_per_sample
    act = spec.active_fields
    pim_f = [i for i in act if place[i] == "pim"]
    host_f = [i for i in act if place[i] == "host"]
    row = {i: dims[i] * bpe for i in act}
    table = {i: vocab[i] * row[i] for i in act}
    pool = {i: max(looks[i] - 1.0, 0.0) * dims[i] for i in act}
    fl = spec.flops_breakdown()
    reasons: list[str] = []

    # --- host side
    host_units, line = host.default_num_units, host.access_granularity_bytes
    cache = host.cache_bytes if config.host_cache_bytes is None else config.host_cache_bytes
    cached = sum(vocab[i] * _ceil_to(row[i], line) for i in host_f)  # host tables in whole cache lines
    share = 1.0 if cached <= cache else cache / cached
    hot = spec.hot_share
    hit = {i: cache_hit_rate(share, vocab[i], None if hot is None else hot[i]) for i in host_f}
    host_bytes = sum(looks[i] * _ceil_to(row[i], line) * (1.0 - hit[i]) for i in host_f)  # from DRAM
    cache_bytes = sum(looks[i] * _ceil_to(row[i], line) * hit[i] for i in host_f)  # from the LLC
    host_rate = host.flops_per_unit * host_units
    t_host_mem = B * host_bytes / (host.bandwidth_bps_per_unit * host_units * host.random_access_efficiency)
    if cache_bytes:
        t_host_mem += B * cache_bytes / host.cache_bandwidth_bps
    host_tables = sum(table[i] for i in host_f)
    if host_tables > host.capacity_bytes_per_unit * host_units:
        reasons.append(f"host tables need {_fmt(host_tables)}, {config.host} holds "
                       f"{_fmt(host.capacity_bytes_per_unit * host_units)}")

    # --- PIM side: per-unit (lookups, bytes, flops, footprint) of the busiest unit
    acc = {i: _ceil_to(row[i], dev.access_granularity_bytes) for i in pim_f}
    pim_bytes = sum(looks[i] * acc[i] for i in pim_f)
    cap = dev.capacity_bytes_per_unit
    int8 = config.precision == "int8"
    pim_rate = dev.int8_ops_per_unit if int8 else dev.flops_per_unit
    eff_bw = dev.bandwidth_bps_per_unit * dev.random_access_efficiency
    if pim_f and config.pooling_in_memory and pim_rate <= 0:
        reasons.append(f"{config.device} cannot pool in memory at {config.precision} (no compute at that precision)")

    def unit_time(lk: float, by: float, fp: float) -> float:
        mem = B * (lk * dev.per_access_overhead_s + by / eff_bw)
        if config.pooling_in_memory and fp > 0 and pim_rate <= 0:
            return math.inf  # the device cannot compute at this precision (e.g. HBM-PIM has no int8 units)
        comp = B * fp / pim_rate if (config.pooling_in_memory and fp > 0) else 0.0
        return max(mem, comp)

    t_pim, mem_per_unit = 0.0, 0.0
    if pim_f and config.partitioning == "table":
        for i in pim_f:
            if table[i] > cap:
                reasons.append(f"table {names[i]} needs {_fmt(table[i])}, a {dev.name} unit holds {_fmt(cap)}; "
                               "use row partitioning")
        groups = _assign_tables({i: table[i] for i in pim_f}, U)
        mem_per_unit = max(sum(table[i] for i in g) for g in groups)
        t_pim = max(unit_time(sum(looks[i] for i in g), sum(looks[i] * acc[i] for i in g),
                              sum(pool[i] for i in g)) for g in groups)
    elif pim_f:
        def share(i: int) -> float:
            if spec.hot_share is None:
                return 1.0 / U
            hot, n_hot = spec.hot_share[i], max(1, math.ceil(0.01 * vocab[i]))
            return hot / min(U, n_hot) + (1.0 - hot) / U
        mem_per_unit = sum(math.ceil(vocab[i] / U) * row[i] for i in pim_f)
        s = {i: share(i) for i in pim_f}
        t_pim = unit_time(sum(s[i] * looks[i] for i in pim_f), sum(s[i] * looks[i] * acc[i] for i in pim_f),
                          sum(s[i] * pool[i] for i in pim_f))
    if pim_f and mem_per_unit > cap and not (config.partitioning == "table" and reasons):
        reasons.append(f"{config.partitioning}-wise placement needs {_fmt(mem_per_unit)} on the fullest of "
                       f"{U} {dev.name} units, each holds {_fmt(cap)}; use more units or a lower precision")
    if pim_f and config.pooling_in_memory and config.precision not in dev.compute_precisions:
        reasons.append(f"{dev.name} computes in {'/'.join(dev.compute_precisions)} only; pooling in memory "
                       f"cannot use {config.precision}")
    inter_pim = config.interaction_in_memory and spec.interaction != "none"
    if inter_pim and len(pim_f) != len(act):
        reasons.append("interaction_in_memory needs every active table in PIM")

    # --- PIM -> host transfer
    res_b = 4 if int8 else bpe  # int8 sums are returned in fp32
    pooled = sum(dims[i] * res_b for i in pim_f)
    if not pim_f:
        xfer = 0.0
    elif config.pooling_in_memory:
        if config.partitioning == "table":
            copies = lambda i: min(looks[i], 1.0)  # noqa: E731
        else:  # one partial sum per unit touched: expected distinct units of L uniform lookups
            copies = lambda i: U * (1.0 - (1.0 - 1.0 / U) ** looks[i])  # noqa: E731
        xfer = sum(copies(i) * dims[i] * res_b for i in pim_f)
    else:
        xfer = pim_bytes
    if inter_pim:  # pooled vectors (and dense inputs) go back down, interaction result comes up
        result = 4.0 if spec.interaction == "fm" else 4.0 * spec.concat_dim
        xfer += (pooled if U > 1 else 0.0) + 4.0 * spec.dense_dim * (spec.interaction == "cross") + result
    t_xfer = B * xfer / (dev.host_link_bps_per_unit * U) if xfer else 0.0

    # --- compute on host / PIM
    pim_pool = sum(pool[i] for i in pim_f) if config.pooling_in_memory else 0.0
    host_pool = fl["pooling"] - pim_pool
    t_host_emb = max(t_host_mem, B * host_pool / host_rate)
    pim_inter = fl["interaction"] if inter_pim else 0.0
    t_inter = B * pim_inter / (pim_rate * U) if inter_pim else B * fl["interaction"] / host_rate
    t_dnn = B * (fl["dnn"] + fl["output"]) / host_rate
    overhead = dev.offload_overhead_s if pim_f else 0.0
    t_emb = max(t_host_emb, t_pim)
    t_exposed_xfer = max(t_host_emb, t_pim + t_xfer) - t_emb
    latency = overhead + t_emb + t_exposed_xfer + t_inter + t_dnn

    # --- energy (per sample)
    pim_flops = pim_pool + pim_inter
    host_flops = spec.flops_per_sample() - pim_flops
    static_w = host.static_power_w_per_unit * host_units + (dev.static_power_w_per_unit * U if pim_f else 0.0)
    e = {"memory": 1e-12 * (host_bytes * host.energy_pj_per_byte + cache_bytes * host.cache_energy_pj_per_byte
                            + pim_bytes * dev.energy_pj_per_byte),
         "compute": 1e-12 * (host_flops * host.energy_pj_per_flop + pim_flops * dev.energy_pj_per_flop),
         "transfer": 1e-12 * xfer * dev.link_energy_pj_per_byte,
         "static": static_w * latency / B}
    if not pim_f:
        mem_per_unit = host_tables / host_units
    return CostReport(
        latency_s_per_batch=latency, energy_j_per_sample=sum(e.values()), flops_per_sample=spec.flops_per_sample(),
        bytes_per_sample=host_bytes + cache_bytes + pim_bytes + xfer, memory_bytes_per_unit=float(mem_per_unit),
        feasible=not reasons, reasons=tuple(reasons),
        breakdown={"overhead": overhead, "embedding": t_emb, "transfer": t_exposed_xfer,
                   "interaction": t_inter, "dnn": t_dnn},
        energy_breakdown=e,
        bytes_breakdown={"host_gather": float(host_bytes), "host_cache": float(cache_bytes),
                         "pim_gather": float(pim_bytes), "transfer": float(xfer)})


def _ratio(a: float, b: float) -> float:
    return 1.0 if a == b else (a / b if b else math.inf)


def compare(spec: ModelSpec, config: PIMConfig, baseline_spec: ModelSpec | None = None,
            baseline_config: PIMConfig | None = None) -> dict[str, float | bool]:
    """Candidate / baseline ratios (< 1 = candidate cheaper).

    The baseline defaults to ``spec`` served host-only (fp32) on the candidate's host at its batch size.
    ``latency_ratio`` compares latency per batch, so keep batch sizes equal or read it as such.
    """
    base_cfg = baseline_config or PIMConfig.baseline(config.batch_size, host=config.host,
                                                     host_cache_bytes=config.host_cache_bytes)
    base = estimate(baseline_spec or spec, base_cfg)
    cand = estimate(spec, config)
    return {"latency_ratio": _ratio(cand.latency_s_per_batch, base.latency_s_per_batch),
            "energy_ratio": _ratio(cand.energy_j_per_sample, base.energy_j_per_sample),
            "flops_ratio": _ratio(cand.flops_per_sample, base.flops_per_sample),
            "feasible": cand.feasible, "baseline_feasible": base.feasible}
