"""Ad hoc try, not kept: FairNAS's strict fairness (Chu et al. 2019, arXiv 1907.01845) for the supernet's dims.

Each step trains ``len(dim_choices)`` sub-architectures in which every field takes every dim choice exactly once
(a random permutation per field) and each DNN layer's width cycles through a permutation of the width choices;
with ``--full`` the largest sub-architecture is trained first as well. It replaces ``SupernetMasks.sandwich`` for
the run and adds the variant ``fair`` to ``benchmarks/supernet_rank.py``, whose other options it passes on:

    PYTHONPATH=. python benchmarks/results/supernet_rank_sampling_tries_2026-11-27/fair_sampling_try.py \
        --datasets movielens-100k,synthetic --per-band 16 --variants fair --time-standalone 1 \
        --cache benchmarks/results/supernet_rank_standalone.json --json /tmp/fair.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import supernet_rank  # noqa: E402

from ihas_lightning.subarchitecture import SandwichPlan, SubArchitecture  # noqa: E402
from ihas_lightning.supernet import SupernetMasks  # noqa: E402

FULL = "--full" in sys.argv


def fair_plan(self: SupernetMasks, generator: torch.Generator, step: int = 0, config=None) -> SandwichPlan:
    config = config or self.config
    dims = torch.tensor(config.dim_choices)
    k = len(dims)
    per_field = torch.stack([dims[torch.randperm(k, generator=generator)] for _ in self.fields], dim=1)   # (k, F)
    shares = torch.tensor(config.width_choices, dtype=torch.float64)
    widths = []
    for hidden in self.hidden_units:
        order = torch.randperm(len(shares), generator=generator)
        picks = shares[order.repeat(-(-k // len(shares)))[:k]]
        widths.append(torch.clamp((picks * hidden).round(), min=1).long())
    widths = torch.stack(widths, dim=1)                                                                # (k, L)
    subs = tuple(SubArchitecture(self.fields, tuple(per_field[i].tolist()), tuple(widths[i].tolist()))
                 for i in range(k))
    return SandwichPlan((self.full, *subs) if FULL else subs, config.distill)


if __name__ == "__main__":
    SupernetMasks.sandwich = fair_plan
    supernet_rank.VARIANTS["fair"] = {"epochs": 4, "sandwich": 4}
    raise SystemExit(supernet_rank.main([a for a in sys.argv[1:] if a != "--full"]))
