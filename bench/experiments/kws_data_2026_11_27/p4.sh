#!/usr/bin/env bash
# A second rendition pass of the training words (.cache/data13x), one GPU call: prep, X-all and
# two leave-one-engine-out runs at once, then the refit of X-all if it passes the go rule
# (bench/experiments/kws_data_2026_11_27/RULES.md).
set -u
if [ ! -d .cache/data13x ]; then  # carried by p4a.sh in the call before, on this machine
  cp -r /root/stash/data13x .cache/ || { echo "no stashed bank: run bench/experiments/kws_data_2026_11_27/p4a.sh first"; exit 3; }
fi
du -sb .cache/data13x; hostname
OUT=${OUT:-/tmp/p4}; mkdir -p "$OUT/r"
START=$(date +%s)
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; W=2; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; TRAIN_END=${TRAIN_END:-300}
else
  DEV=cuda; W=14; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs 30"; TRAIN_END=${TRAIN_END:-445}
  python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
export PYTHONUNBUFFERED=1
python -c "import pydantic, safetensors, pyroomacoustics, soundfile; print('deps ok')" || exit 1
DEADLINE=$((START + TRAIN_END))
taskset -c 0-15 python scripts/data13_train.py prep-kws --bank .cache/data13x --work /tmp/d13 --workers $W $SM \
  --n-train ${N_TRAIN:-12000} --train-noise=-5,30,0.9 > "$OUT/r/prep.log" 2>&1 || { tail -20 "$OUT/r/prep.log"; exit 1; }
echo "prep done at $(( $(date +%s) - START )) s"
COMMON="--device $DEV --bank .cache/data13x --work /tmp/d13 --out $OUT/r --threads 2 $SM"
BASE="--front-end logmel $ARCH --lr 0.004 --dropout 0.2"
# name:run:cores
for spec in "kws-x-all:all:0-4" "kws-x-loeo-espeak:loeo-espeak:5-9" "kws-x-loeo-mbrola:loeo-mbrola:10-15"; do
  IFS=: read name run cores <<< "$spec"
  [ "$SMOKE" = 1 ] && cores=0-1
  taskset -c $cores python scripts/data13_train.py kws --run $run --run-name $name $BASE $COMMON \
    --patch-size 160 --n-mels 40 --time-mask 10 --channel-mask 8 \
    --deadline $DEADLINE > "$OUT/r/$name.log" 2>&1 &
done
wait
echo "trainings done at $(( $(date +%s) - START )) s"
GO=$(python -c "import json,sys; v=json.load(open('$OUT/r/kws-x-all/metrics.json'))['val_accuracy']; print(v, file=sys.stderr); print(1 if v >= float('${GO_VAL:-0.863}') else '')")
if [ -n "$GO" ]; then
  echo "refit kws-x-all from $(( $(date +%s) - START )) s"
  taskset -c $([ "$SMOKE" = 1 ] && echo 0-1 || echo 0-15) python scripts/data13_train.py kws --run all --run-name kws-x-all-refit $COMMON \
    --init-from "$OUT/r/kws-x-all" --refit-on-val --epochs 2 --lr 0.001 --time-mask 10 --channel-mask 8 \
    > "$OUT/r/kws-x-all-refit.log" 2>&1
fi
for f in "$OUT"/r/*.log; do echo "== $f"; grep -E "^epoch" "$f" | tail -n 2; tail -n 2 "$f"; done
rm -rf "$OUT"/r/*/last
tar czf "$OUT/p4.tgz" -C "$OUT" r && rm -rf "$OUT/r"
echo "done at $(( $(date +%s) - START )) s"
