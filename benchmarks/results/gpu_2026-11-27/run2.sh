#!/bin/bash
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD IHAS_DATA_DIR=$PWD/.devdata/data PYTHONUNBUFFERED=1 MPLBACKEND=Agg
echo "== phase 1 $(( $(date +%s)-T0 ))s"
timeout 80 python3 -m pytest -q -p no:cacheprovider -rf integration_tests/test_gpu.py tests/test_compact.py 2>&1 | tee $OUT/p1.log | grep -v Warn | tail -8
echo "== phase 2 $(( $(date +%s)-T0 ))s"
timeout 100 python3 benchmarks/throughput.py --device cuda --vocab capped --models DCN --repeats 1 --json $OUT/throughput_gpu_capped_dcn.json 2>&1 | tee $OUT/p2.log | tail -8
left=$(( 290 - ($(date +%s)-T0) ))
echo "== phase 3, ${left}s"
timeout $left python3 -m pytest -q -p no:cacheprovider -n 14 -rf tests integration_tests --deselect integration_tests/test_gpu.py -p no:benchmark 2>&1 | tee $OUT/p3.log | grep -E "FAILED|passed|failed|^E " | head -30
echo "== done $(( $(date +%s)-T0 ))s"
