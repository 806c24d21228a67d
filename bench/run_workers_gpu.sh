#!/usr/bin/env bash
# Streams vs front-end workers on one GPU of a two-GPU host (bench/RESULTS.md, "Workers").
# The server is pinned to CPUs 0-15 and GPU 0, the load generator to CPUs 16-31, so one
# 16-core + 1-GPU server is measured and the load generator is not its limit.
# Usage: CONFIGS="base 0 1:128 4:512 8 15" MODEL=kws-s4d OUT=/dir bench/run_workers_gpu.sh
# (W:N starts that config's sweep at N streams; default START). STREAMS="2000,2048" REPEAT=2
# runs just those counts instead of a sweep. On a host with more cores give the load generator
# more: SERVER_CPUS=0-15 CLIENT_CPUS=16-63 PROCS=40. P99 = the pass rule's p99 in ms.
# GPUS=0,1 serves on several GPUs (one engine each; CUDA_VISIBLE_DEVICES), default GPU 0.
# PROFILE_AFTER=S (with py-spy installed): S seconds after the engine starts, py-spy records the
# engine and the first front-end for PROFILE_SECONDS (default 5) into $OUT/prof_*.txt (collapsed
# stacks; PROFILE_FLAGS=--native adds C frames).
# "base" = the single-process server as of commit 610238e, unpacked in .baseline/.
set -u
OUT=${OUT:-/tmp/s4d-gpu-out}; MODEL=${MODEL:-kws-s4d}; CONFIGS=${CONFIGS:-"base 0 4 8 15"}
START=${START:-128}; MAXN=${MAXN:-8192}; DUR=${DUR:-4}; PROCS=${PROCS:-12}
SERVER_CPUS=${SERVER_CPUS:-0-15}; CLIENT_CPUS=${CLIENT_CPUS:-16-31}; P99=${P99:-100}
mkdir -p "$OUT"
ulimit -n 1048576 2>/dev/null || ulimit -n 65536  # thousands of sockets per process
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/server/*.whl || exit 1
if ls .whl/tools/py_spy-*.whl >/dev/null 2>&1; then  # optional: PROFILE_AFTER
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/tools/py_spy-*.whl
fi
export PATH=/tmp/site/bin:$PATH
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${GPUS:-0}
export S4D_LOG_LEVEL=warning S4D_DEVICE=cuda S4D_MODELS=$MODEL S4D_MAX_SESSIONS=$((MAXN + 8))
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; date -u
bash "$(dirname "$0")/cpu_topology.sh" "$SERVER_CPUS" "$CLIENT_CPUS"
one=(); [ -n "${STREAMS:-}" ] && one=(--streams "$STREAMS" --repeat "${REPEAT:-1}")  # no sweep
common=("${one[@]}" --model "$MODEL" --duration "$DUR" --warmup 1 --max-streams "$MAXN"
        --bisect-tol 0.1 --client-procs "$PROCS" --client-cpus "$CLIENT_CPUS" --server-timeout 180
        --p99-ms "$P99")
profile() {  # $1 = tag; samples the server's busiest processes while the load runs
  [ -n "${PROFILE_AFTER:-}" ] && command -v py-spy >/dev/null || return 0
  for _ in $(seq 600); do pgrep -x s4d-engine-0 >/dev/null && break; sleep 0.5; done
  sleep "$PROFILE_AFTER"  # counted from the engine's start
  for name in s4d-engine-0 s4d-frontend-0; do
    pid=$(pgrep -x "$name" | head -1); [ -n "$pid" ] || continue
    py-spy record --nonblocking --threads ${PROFILE_FLAGS:-} -r 200 -d "${PROFILE_SECONDS:-5}" -f raw -p "$pid" \
      -o "$OUT/prof_$1_$name.txt" >/dev/null 2>&1 &
  done
  wait
}
for cs in $CONFIGS; do
  c=${cs%%:*}; st=$START; [ "$cs" != "$c" ] && st=${cs#*:}
  echo "== $MODEL config $c"
  profile "${MODEL}_w$c" &
  if [ "$c" = base ]; then
    port=18123
    (cd .baseline && S4D_PORT=$port PYTHONPATH=/tmp/site:$PWD taskset -c "$SERVER_CPUS" \
        python3 -m s4d_cli serve > "$OUT/base_server.log" 2>&1) &
    for i in $(seq 300); do curl -sf localhost:$port/readyz >/dev/null && break; sleep 0.5; done
    pid=$(pgrep -f "s4d_cli serve" | head -1)
    timeout 400 python3 -m bench.serve "${common[@]}" --start "${BASE_START:-128}" --url http://127.0.0.1:$port \
        --server-pid "$pid" --output "$OUT/${MODEL}_base.json" > "$OUT/${MODEL}_base.log" 2>&1
    grep -E "^N=|largest|Error|error" "$OUT/${MODEL}_base.log" | cut -c1-220
    [ -n "$pid" ] && kill "$pid"; wait
  else
    timeout 400 python3 -m bench.serve "${common[@]}" --start "$st" --checkpoints checkpoints --device cuda \
        --workers "$c" --server-cpus "$SERVER_CPUS" --output "$OUT/${MODEL}_w$c.json" > "$OUT/${MODEL}_w$c.log" 2>&1
    grep -E "^N=|largest|Error|error" "$OUT/${MODEL}_w$c.log" | cut -c1-220
  fi
done
ls "$OUT"
