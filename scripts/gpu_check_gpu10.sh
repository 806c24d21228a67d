#!/usr/bin/env bash
# GPU check of issue 10's pieces built on CPU (branch gpu10): <= 3 minutes on one GPU.
# Run from the repository root with $OUT set:  bash scripts/gpu_check_gpu10.sh
# Carry: .whl/server, .whl/train/safetensors-*.whl (if the machine lacks safetensors),
# .cache/gpu10 (the shipped checkpoints' test splits, made here by
# `python -m bench.precision --write-data .cache/gpu10`; without it the precision section
# is skipped). SMOKE=1: a CPU dry run at tiny sizes (uses the current python3 environment).
set -u
OUT=${OUT:-/tmp/s4d-gpu10-out}
R="$OUT/gpu10"
mkdir -p "$R"
PY=${PYTHON:-python3}
if [ -z "${SMOKE:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site-gpu10 .whl/server/*.whl > "$R/pip.log" 2>&1 || { cat "$R/pip.log"; exit 1; }
  export PYTHONPATH=/tmp/site-gpu10:$PWD
  if ! $PY -c "import safetensors" 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-gpu10 \
        .whl/train/safetensors-*.whl >> "$R/pip.log" 2>&1 || echo "no safetensors wheel"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$R/gpu.txt"
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
start=$(date +%s)
rc=0
smoke=(); [ -n "${SMOKE:-}" ] && smoke=(--smoke)
echo "== step / batch / memory / onnx sections"
timeout 85 $PY -m bench.gpu10 --out "$R" "${smoke[@]}" 2>&1 | tee "$R/gpu10.log" | cut -c1-240
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
echo "== precision modes vs float64 on the test splits ($(( $(date +%s) - start )) s so far)"
if [ -d .cache/gpu10 ] && [ -z "${SMOKE:-}" ]; then
  timeout 45 $PY -m bench.precision --data .cache/gpu10 --out "$R/precision.json" 2>&1 \
      | tee "$R/precision.log" | cut -c1-240
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
elif [ -n "${SMOKE:-}" ]; then
  timeout 170 $PY -m bench.precision --device cpu --checkpoints fsdd-s4d --limit 8 \
      --out "$R/precision.json" 2>&1 | tee "$R/precision.log" | cut -c1-240
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
else
  echo "skipped: .cache/gpu10 was not carried" | tee "$R/precision.log"
fi
echo "== shipped checkpoints: graphed step vs eager vs batch ($(( $(date +%s) - start )) s so far)"
if [ -z "${SMOKE:-}" ]; then
  timeout 40 $PY -m bench.gpu_check 2>&1 | tee "$R/gpu_check.log" | cut -c1-240
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
echo "== done in $(( $(date +%s) - start )) s, rc=$rc"
ls -la "$R"
exit $rc
