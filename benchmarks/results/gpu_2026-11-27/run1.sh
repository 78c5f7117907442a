#!/bin/bash
# GPU re-check after the stop-34 fixes: GPU tests, the fixed files, throughput on CUDA, then the rest of the suite.
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD IHAS_DATA_DIR=$PWD/.devdata/data PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi -L; python3 -c "import torch, pytorch_lightning, onnxruntime; print(torch.__version__, pytorch_lightning.__version__, onnxruntime.__version__, torch.cuda.get_device_name())"
git log --oneline -1
echo "== phase 1: GPU tests + fixed files $(( $(date +%s)-T0 ))s"
timeout 170 python3 -m pytest -q -p no:cacheprovider -x -rs integration_tests/test_gpu.py "tests/test_clustering.py::test_gpu_matches_cpu" \
  tests/test_noise.py tests/test_model.py tests/test_pim_study.py tests/test_compact.py tests/test_export.py tests/test_benchmark_data.py \
  2>&1 | tee $OUT/phase1.log | tail -25
echo "== phase 2: throughput capped on cuda $(( $(date +%s)-T0 ))s"
timeout 130 python3 benchmarks/throughput.py --device cuda --vocab capped --repeats 2 --json $OUT/throughput_gpu_capped.json 2>&1 | tee $OUT/phase2.log | tail -15
cp benchmarks/results/throughput_capped.md $OUT/ 2>/dev/null
echo "== phase 3: throughput criteo on cuda $(( $(date +%s)-T0 ))s"
timeout 90 python3 benchmarks/throughput.py --device cuda --vocab criteo --batches 8 --sides ours deepctr --repeats 1 --json $OUT/throughput_gpu_criteo.json 2>&1 | tee $OUT/phase3.log | tail -12
left=$(( 420 - ($(date +%s)-T0) ))
echo "== phase 4: rest of suite, ${left}s left"
[ $left -gt 30 ] && timeout $left python3 -m pytest -q -p no:cacheprovider -n 8 tests integration_tests \
  --deselect integration_tests/test_gpu.py 2>&1 | tee $OUT/phase4.log | tail -30
echo "== done $(( $(date +%s)-T0 ))s"
