#!/usr/bin/env bash
# A/B of two source trees on one GPU host, interleaved (bench/RESULTS.md, "Workers"): per round,
# tree A then tree B, each a fresh `s4d serve --workers W` pinned to SERVER_CPUS + GPU 0 with
# the load generator on CLIENT_CPUS, at the fixed stream counts STREAMS (REPEAT runs each).
# Both trees serve this checkout's checkpoints. One summary line per run.
# Usage: A=.cache/ab_prev B=. W=15 STREAMS=2000 REPEAT=2 ROUNDS=2 MODEL=kws-s4d P99=50 \
#        SERVER_CPUS=0-15 CLIENT_CPUS=16-63 PROCS=44 bash bench/ab_workers_gpu.sh
# (tree A: `mkdir -p .cache/ab_prev && git archive REV server model bench clients s4d_cli.py |
#  tar -x -C .cache/ab_prev`)
set -u
OUT=${OUT:-/tmp/s4d-ab-gpu}; MODEL=${MODEL:-kws-s4d}; A=${A:-.cache/ab_prev}; B=${B:-.}
W=${W:-15}; STREAMS=${STREAMS:-2000}; REPEAT=${REPEAT:-2}; ROUNDS=${ROUNDS:-2}; DUR=${DUR:-4}
PROCS=${PROCS:-44}; P99=${P99:-50}; SERVER_CPUS=${SERVER_CPUS:-0-15}
CLIENT_CPUS=${CLIENT_CPUS:-16-63}; ROOT=$PWD
mkdir -p "$OUT"
ulimit -n 1048576 2>/dev/null || ulimit -n 65536
DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}
if [ "${INSTALL:-1}" = 1 ]; then  # the device machine: server wheels carried in .whl/server
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/server/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=0
export S4D_LOG_LEVEL=warning S4D_DEVICE=$DEVICE S4D_MODELS=$MODEL S4D_MAX_SESSIONS=$((${STREAMS##*,} + 64))
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1; nproc; date -u
bash "$(dirname "$0")/cpu_topology.sh" "$SERVER_CPUS" "$CLIENT_CPUS"
summary() {  # $1 = JSON of one bench.serve call, $2 = label
  "$PY" - "$1" "$2" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    lat, cpu = r["latency_ms"], r.get("server_cpu_us_per_frame", {})
    fe = [v for k, v in r["server_cpu_percent_by_process"].items() if "frontend" in k]
    eng = [v for k, v in r["server_cpu_percent_by_process"].items()
           if k.startswith("s4d-engine")]  # the process, not its main thread's own line
    m = r.get("server_metrics") or {}
    print(f"{sys.argv[2]} N={r['streams']} p50/p95/p99={lat['p50']:.1f}/{lat['p95']:.1f}/"
          f"{lat['p99']:.1f} ms late={r['late_frames']}/{r['frames_measured']} "
          f"errors={r['error_count']} lag_p99={r['client_lag_ms']['p99']:.1f} "
          f"fe_us/frame={cpu.get('front-ends')} eng_us/frame={cpu.get('engine')} "
          f"fe_cpu={min(fe, default=0):.0f}-{max(fe, default=0):.0f}% "
          f"engine_cpu={max(eng, default=0):.0f}% steps={m.get('step_ms_mean')}ms"
          f"x{m.get('batch_mean')} gc={m.get('gc_pauses')} late_streams={r.get('late_streams')} "
          f"late_bins={r.get('late_bins_100ms')} pass={r['pass']}")
PY
}
for round in $(seq "$ROUNDS"); do
  for tag in A B; do
    tree=${!tag}; f="$OUT/${MODEL}_w${W}_${tag}_$round.json"
    (cd "$tree" && PYTHONPATH=/tmp/site:$PWD timeout 500 "$PY" -m bench.serve \
        --streams "$STREAMS" --repeat "$REPEAT" --model "$MODEL" --duration "$DUR" --warmup 1 \
        --client-procs "$PROCS" --client-cpus "$CLIENT_CPUS" --server-cpus "$SERVER_CPUS" \
        --server-timeout 180 --p99-ms "$P99" --checkpoints "$ROOT/checkpoints" --device "$DEVICE" \
        --workers "$W" --output "$f" > "$f.log" 2>&1)
    summary "$f" "round=$round $tag" 2>/dev/null || { echo "round=$round $tag failed:"; tail -5 "$f.log"; }
  done
done
