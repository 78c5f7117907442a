"""Ad hoc try, not kept: the supernet's weights as an exponential moving average over its training steps (BigNAS,
Yu et al. 2020, scores with one), through Lightning's ``WeightAveraging`` with ``get_ema_avg_fn(DECAY)``.

It adds the variant ``sandwich_ema`` (the sandwich rule, 4 epochs, plus the average) to
``benchmarks/supernet_rank.py``, whose other options it passes on:

    PYTHONPATH=. python benchmarks/results/supernet_rank_sampling_tries_2026-11-27/ema_try.py 0.9 \
        --datasets movielens-100k,synthetic --per-band 16 --variants sandwich_ema --time-standalone 1 \
        --cache benchmarks/results/supernet_rank_standalone.json --json /tmp/ema_0.9.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from pytorch_lightning.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_avg_fn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import supernet_rank  # noqa: E402

if __name__ == "__main__":
    decay, stand_alone_trainer = float(sys.argv[1]), supernet_rank.trainer
    supernet_rank.trainer = lambda epochs, callbacks: stand_alone_trainer(
        epochs, [*callbacks, WeightAveraging(avg_fn=get_ema_avg_fn(decay))])
    supernet_rank.VARIANTS["sandwich_ema"] = {"epochs": 4, "sandwich": 2}
    raise SystemExit(supernet_rank.main(sys.argv[2:]))
