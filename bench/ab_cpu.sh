#!/usr/bin/env bash
# The 2-core CPU no-regression check (bench/RESULTS.md): the single-process server before the
# process split (commit 610238e, unpacked in .baseline/: `git archive 610238e | tar -x -C
# .baseline`) against today's, interleaved (old, new W=0, new W=1, ... per N and repeat) so that
# both meet the same machine load. One run per (config, N, repeat); a summary line each.
# Usage: NS="8 12 16" REPS=2 CONFIGS="base 0 1" MODEL=kws-s4d bench/ab_cpu.sh
set -u
OUT=${OUT:-/tmp/s4d-ab-cpu}; MODEL=${MODEL:-kws-s4d}; NS=${NS:-"8 12 16"}; REPS=${REPS:-2}
CONFIGS=${CONFIGS:-"base 0 1"}; DUR=${DUR:-6}; WARMUP=${WARMUP:-2}; PY=${PY:-$PWD/.venv/bin/python}
mkdir -p "$OUT"; date -u; nproc; uptime
summary() {  # one line from a bench.serve JSON
  "$PY" - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
lat = r["latency_ms"]
print(f"N={r['streams']} p50={lat['p50']:.0f} p99={lat['p99']:.0f} ms late={r['late_frames']}"
      f"/{r['frames_measured']} rtf={r['rtf']:.3f} server_cpu={r['server_cpu_percent']:.0f}% "
      f"client_lagging={r['client_lagging']} pass={r['pass']}")
PY
}
for rep in $(seq "$REPS"); do
  for n in $NS; do
    for c in $CONFIGS; do
      f="$OUT/${MODEL}_${c}_${n}_$rep.json"
      common=(--model "$MODEL" --duration "$DUR" --warmup "$WARMUP" --streams "$n" --client-procs 1
              --json --output "$f")
      if [ "$c" = base ]; then
        (cd .baseline && "$PY" -m bench.serve "${common[@]}" > "$f.log" 2>&1)
      else
        "$PY" -m bench.serve "${common[@]}" --workers "$c" > "$f.log" 2>&1
      fi
      echo "$MODEL rep=$rep config=$c $(summary "$f" 2>/dev/null || echo "N=$n failed: see $f.log")"
    done
  done
done
