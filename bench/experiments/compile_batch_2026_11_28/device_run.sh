#!/usr/bin/env bash
# The device call behind RESULTS.md's "--compile-batch" section (an H200, its python3 with
# torch; the carried wheels give the server's dependencies). Each step bounded by `timeout`.
#   bash bench/experiments/compile_batch_2026_11_28/device_run.sh OUT
set -u
OUT=$1 HERE=bench/experiments/compile_batch_2026_11_28
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/server/*.whl .whl/test/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 python3 -m bench.batch_fft --device cuda --variants kept compiled-dyn --clips 16000 \
  --batches 1 16 64 --out "$OUT/design" >"$OUT/design.log" 2>&1; echo "design rc $?"
for mode in plain compiled; do
  flag=$([ $mode = compiled ] && echo --compile-batch)
  timeout 150 python3 -m bench.rest_forward --device cuda --label $mode $flag --reps 20 \
    --models kws-s4d ecg-s4d fsdd-s4d --lengths 16000 16001 --batches 1 64 >"$OUT/rest_$mode.log" 2>&1
  echo "rest_forward $mode rc $?"
done
python3 - <<'PY'
import sys; sys.path.insert(0, "tests")
from conftest import TINY_MODELS, _make_checkpoint
for i, m in enumerate(("tiny2", "tinynone", "tinyema")):
    _make_checkpoint("/tmp/ck", m, *TINY_MODELS[m], seed=i + 1)
PY
S4D_CHECK_DEVICE=cuda timeout 100 python3 tests/compiled_step_check.py batch /tmp/ck/tiny2 \
  /tmp/ck/tinynone /tmp/ck/tinyema >"$OUT/check_cuda.log" 2>&1; echo "check on cuda rc $?"
for flags in "" "--compile-batch"; do
  timeout 100 bash $HERE/serve_gpu.sh 8301 32 8 --models kws-s4d $flags >>"$OUT/serve.log" 2>&1
done
echo done
