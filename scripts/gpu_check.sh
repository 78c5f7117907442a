#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine whose sessions are short and which reaches no network.
#
#   bash scripts/gpu_check.sh prepare   # here: the wheels the device's python lacks (.whl/) and the real data
#                                       # (.devdata/data, never committed), both git-ignored
#   bash scripts/gpu_check.sh run [S]   # there, in the repository root, with .whl and .devdata carried and $OUT
#                                       # set: installs the wheels, then runs within S seconds (default 540):
#                                       # 1. integration_tests/test_gpu.py (the GPU contract),
#                                       # 2. the whole suite on the GPU machine, one line per test (-v), so a
#                                       #    failure's name is in $OUT/suite.log even if the time runs out.
# What the last runs found is in benchmarks/results/gpu_2026-11-27/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    # The device had python 3.12 and torch, pytorch-lightning, numpy and friends, but not these (2026-11-27).
    # One at a time: a wheel this machine cannot get (psycopg2-binary for cp312 where PyPI is out of reach) only
    # costs the tests that need it (PostgreSQL storage), which then fail or skip there.
    rm -rf .whl && mkdir .whl
    for package in deepctr-torch==0.3.0 optuna==5.0.0 alembic==1.20.1 colorlog==6.12.0 Mako==1.4.3 \
            SQLAlchemy==2.1.9 bottle==0.13.4 optuna-dashboard==0.21.0 psycopg2-binary==2.9.13; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl "$package" \
            > /dev/null 2>&1 || echo "no wheel for $package (python 3.12): the tests that need it will fail there"
    done
    data="${IHAS_DATA_DIR:-../shared/data}"
    rm -rf .devdata && mkdir -p .devdata && cp -r "$data" .devdata/data || exit 1
    echo "prepared .whl ($(ls .whl | wc -l) wheels) and .devdata/data; carry both to the device"
    ;;
run)
    : "${OUT:?set OUT to the folder whose files come back}"
    budget="${2:-540}"
    start=$(date +%s)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD" IHAS_DATA_DIR="$PWD/.devdata/data" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
    python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())" >> "$OUT/gpu.txt" 2>&1
    timeout 200 python3 -m pytest -p no:cacheprovider -v -rf integration_tests/test_gpu.py \
        > "$OUT/gpu_tests.log" 2>&1
    echo "gpu tests: $(tail -1 "$OUT/gpu_tests.log")"
    left=$(( budget - ($(date +%s) - start) ))
    workers=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
    if python3 -c "import xdist" 2>/dev/null; then xdist=(-n "$workers"); else xdist=(); fi
    timeout "$left" python3 -m pytest -p no:cacheprovider -v -rf "${xdist[@]}" tests integration_tests \
        --deselect integration_tests/test_gpu.py > "$OUT/suite.log" 2>&1
    echo "suite: $(tail -1 "$OUT/suite.log")"
    grep -E "(FAILED|ERROR) " "$OUT/suite.log" | sort -u | head -40
    echo "done in $(( $(date +%s) - start )) s"
    ;;
*)
    echo "usage: bash scripts/gpu_check.sh prepare | run [SECONDS]" >&2
    exit 2
    ;;
esac
