#!/usr/bin/env bash
# stream15's part of the combined GPU training call (see model/train_streams.py):
# fine-tunes kws-s4d and ecg-s4d on long streams with per-step targets (pooling 'ema'),
# chooses each event detector on validation streams and measures it on held-out test streams.
# Both run at once on one GPU (CUDA_VISIBLE_DEVICES, default 0; cores split in half from FIRST_CORE); each fits its training into a time budget
# (KWS_BUDGET_S, ECG_BUDGET_S seconds), then evaluates; then bench/long_stream.py measures
# the cost per second over a 1-hour stream (stops early, and says so, past 85 s):
# about 5 min wall in all.
#
#   OUT=/some/dir bash scripts/gpu_train_stream15.sh          # on the GPU box (repo root)
#   SMOKE=1 OUT=/tmp/o bash scripts/gpu_train_stream15.sh     # tiny CPU dry run
#
# Needs .cache/stream15/{words,rirs}.npz (python -m model.data.stream_bank .cache/stream15
# words,rirs) and the ECG bank .cache/stream15t5/ecg.npz of the template generator
# (python -m model.data.stream_bank .cache/stream15t5 ecg; ECG_BANK to use another).
# Writes $OUT/stream15/{kws-events-s4d,ecg-monitor-s4d}/{config.json,model.safetensors,
# metrics.json}, *.log and env.json. Install here: python -m model.install_streams <that dir>.
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
DEST="$OUT/stream15"
mkdir -p "$DEST"
PY=${PYTHON:-python3}
BANK=.cache/stream15
ECG_BANK=${ECG_BANK:-.cache/stream15t5}
for f in "$BANK/words" "$BANK/rirs" "$ECG_BANK/ecg"; do
  [ -f "$f.npz" ] || { echo "missing $f.npz (carry $(dirname "$f"))" >&2; exit 2; }
done
if [ -z "${SMOKE:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --find-links .whl/server --find-links .whl/train \
    pydantic pydantic-core annotated-types typing-inspection safetensors tqdm \
    >"$DEST/pip.log" 2>&1 || echo "pip install failed (see pip.log); trying with what is installed"
  export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
  DEVICE=cuda
  # half the cores each (cores 16-31 when another job holds 0-15 of a 32-core box)
  CORES=$(nproc); FIRST=${FIRST_CORE:-0}; HALF=$(( (CORES - FIRST) / 2 ))
  PIN_KWS="taskset -c $FIRST-$((FIRST + HALF - 1))"
  PIN_ECG="taskset -c $((FIRST + HALF))-$((FIRST + 2 * HALF - 1))"
  command -v taskset >/dev/null || { PIN_KWS=""; PIN_ECG=""; }
  EXTRA=()
else
  DEVICE=cpu; PIN_KWS=""; PIN_ECG=""; EXTRA=(--smoke)
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - >"$DEST/env.json" <<'PYEOF'
import json, platform, torch
print(json.dumps({"torch": torch.__version__, "python": platform.python_version(),
                  "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
PYEOF
start=$(date +%s)
$PIN_KWS "$PY" -m model.train_streams kws-events --bank "$BANK" --device "$DEVICE" \
  --out "$DEST/kws-events-s4d" --budget-s "${KWS_BUDGET_S:-140}" "${EXTRA[@]}" \
  >"$DEST/kws-events.log" 2>&1 &
kws=$!
$PIN_ECG "$PY" -m model.train_streams ecg-monitor --bank "$ECG_BANK" --device "$DEVICE" \
  --out "$DEST/ecg-monitor-s4d" --budget-s "${ECG_BUDGET_S:-330}" "${EXTRA[@]}" \
  >"$DEST/ecg-monitor.log" 2>&1 &
ecg=$!
wait $kws; rk=$?
wait $ecg; re=$?
# issue 15: does a 1-hour stream cost the same per second as a 1-second one? The server's
# per-frame work (gather -> step -> scatter, CUDA graphs) over a 1-hour stream, per minute.
if [ -z "${SMOKE:-}" ]; then LONG_S=${LONG_S:-3600}; else LONG_S=4; fi
for m in ecg-s4d kws-s4d; do
  timeout "${LONG_TIMEOUT_S:-100}" $PIN_KWS "$PY" -m bench.long_stream --checkpoint "checkpoints/$m" \
    --seconds "$LONG_S" --bucket-s "$([ -z "${SMOKE:-}" ] && echo 60 || echo 1)" \
    --max-wall-s "${LONG_MAX_WALL_S:-85}" \
    --device "$DEVICE" --json "$DEST/long_stream_$m.json" >"$DEST/long_stream_$m.log" 2>&1 \
    || echo "long_stream $m failed or timed out (see long_stream_$m.log)"
done
echo "kws-events rc=$rk, ecg-monitor rc=$re, $(( $(date +%s) - start )) s" | tee "$DEST/done.txt"
tail -n 5 "$DEST/kws-events.log" "$DEST/ecg-monitor.log"
[ $rk -eq 0 ] && [ $re -eq 0 ]
