#!/usr/bin/env bash
# The GPU benchmark pass recorded in bench/RESULTS.md, as run on a lent H100 machine
# (Python 3.12 + torch preinstalled, no registry). Wheels travel in git-ignored folders:
# .whl/server (server deps for cp312) and, optionally, /tmp/site-ort (onnxruntime-gpu).
# Usage: OUT=/some/dir bench/run_gpu.sh
set -u
OUT=${OUT:-/tmp/s4d-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/server/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
echo "== core (CUDA)"
timeout 150 python3 -m bench.core --device cuda --sessions 1,16,64,256,512 --json > "$OUT/core_cuda.json"
python3 -c "import json;[print(r) for r in json.load(open('$OUT/core_cuda.json'))['rows']]"
echo "== serve kws (server on CUDA)"
timeout 200 python3 -m bench.serve --checkpoints checkpoints --model kws-s4d --device cuda \
    --duration 5 --warmup 1 --start 16 --max-streams 2048 --client-procs 8 --server-timeout 120 \
    --output "$OUT/serve_kws_cuda.json" > /dev/null
echo "== serve ecg (server on CUDA)"
timeout 150 python3 -m bench.serve --checkpoints checkpoints --model ecg-s4d --device cuda \
    --duration 5 --warmup 1 --start 256 --max-streams 16384 --client-procs 8 --server-timeout 120 \
    --output "$OUT/serve_ecg_cuda.json" 2>&1 | tail -5
ls -la "$OUT"
