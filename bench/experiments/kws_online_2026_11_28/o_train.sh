#!/usr/bin/env bash
# Third warm call: three trainings at once on the preps of o_prep.sh, the shipped kws-s4d's
# first-stage recipe (log-mel, H=192, 6 layers, batch 256, lr 0.004, dropout 0.2, 30 epochs
# planned, cut to the deadline): fixed_f (the prepared training clips, voice fold), online_f
# (clips mixed per batch, voice fold) and online_a (clips mixed per batch, the shipped splits).
set -u
OUT=${OUT:-/tmp/o3out}; RUNS=${RUNS:-/tmp/o3}; mkdir -p "$OUT" "$RUNS/r"
START=$(date +%s)
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; TRAIN_END=${TRAIN_END:-400}
  STASH=${STASH:-.cache}; ROOMS=8
else
  DEV=cuda; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs 30"; TRAIN_END=${TRAIN_END:-540}
  STASH=/root/stash; ROOMS=512
  python3 -c "import pyroomacoustics" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/train/*.whl 2>&1 | tail -n 3
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
for b in xf xa; do [ -f /tmp/do$b/kws_sets.json ] || { echo "no prep $b: run o_prep.sh first"; exit 3; }; done
export PYTHONUNBUFFERED=1
DEADLINE=$((START + TRAIN_END))
BASE="--front-end logmel $ARCH --lr 0.004 --dropout 0.2 --patch-size 160 --n-mels 40 --time-mask 10 --channel-mask 8 --skip-extra"
run() {  # name prep cores extra-args...
  local name=$1 prep=$2 cores=$3; shift 3
  [ "$SMOKE" = 1 ] && cores=0-1
  taskset -c $cores python3 scripts/data13_train.py kws --run all --run-name kws-$name $BASE \
    --device $DEV --work /tmp/do$prep --bank "$STASH/data13x" --out "$RUNS/r" --threads 2 $SM \
    --workers 4 --rooms $ROOMS --deadline $DEADLINE "$@" > "$RUNS/r/kws-$name.log" 2>&1
}
run fixed_f xf 0-4 &
run online_f xf 5-9 --online-mix &
run online_a xa 10-15 --online-mix &
wait
echo "trainings done at $(( $(date +%s) - START )) s"
for f in "$RUNS"/r/kws*.log; do echo "== $f"; grep -E "^epoch" "$f" | tail -n 3; tail -n 3 "$f"; done
rm -rf "$RUNS"/r/*/last
tar czf "$OUT/o3.tgz" -C "$RUNS" r
ls -la "$OUT"
