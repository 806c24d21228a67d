#!/usr/bin/env bash
# CPU-only serving on a many-core host: kws-s4d capacity with E engine processes
# (engines_per_device) of T compute threads each, W = 4 front-ends, the server pinned to
# SERVER_CPUS and the load generator to CLIENT_CPUS; no GPU is used even where there is one.
#   CONFIGS="1:1 1:15 6:1 6:2" START=8 OUT=/dir bash bench/run_cpu_engines.sh
# (bench/RESULTS.md, "Workers": several CPU engines). On the lent GPU machine it installs the
# carried .whl/server wheels first (torch and numpy are expected there).
set -u
OUT=${OUT:-/tmp/s4d-cpu-engines}; mkdir -p "$OUT"
if ls .whl/server/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/server/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES= S4D_LOG_LEVEL=warning
SERVER_CPUS=${SERVER_CPUS:-0-15}; CLIENT_CPUS=${CLIENT_CPUS:-16-31}
nproc
for cfg in ${CONFIGS:-1:1 1:15 6:1 6:2}; do
  E=${cfg%%:*}; T=${cfg##*:}
  echo "== engines_per_device $E, compute_threads $T"
  timeout 150 python3 -m bench.serve --model kws-s4d --checkpoints checkpoints --device cpu --workers 4 \
    --server-cpus "$SERVER_CPUS" --client-cpus "$CLIENT_CPUS" --client-procs ${PROCS:-14} \
    --start ${START:-8} --max-streams 2048 --duration 5 --warmup 1 --p99-ms 100 --bisect-tol 0.15 \
    --server-timeout 120 --server-env S4D_ENGINES_PER_DEVICE=$E --server-env S4D_COMPUTE_THREADS=$T \
    --server-env S4D_MAX_SESSIONS=2100 --output "$OUT/cpu_e${E}_t$T.json" 2>&1 \
    | grep -E "^N=|largest|rror" | cut -c1-300
done
