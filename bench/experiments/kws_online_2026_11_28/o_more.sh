#!/usr/bin/env bash
# Fourth warm call: the refit of online_a (its validation voices join, 2 epochs at lr 0.001, the
# last epoch kept: the shipped kws-s4d's refit) and leave-one-engine-out runs of the online
# recipe for the two engines furthest below target (espeak-ng, MBROLA), all at once.
set -u
OUT=${OUT:-/tmp/o4out}; RUNS=${RUNS:-/tmp/o3}; mkdir -p "$OUT" "$RUNS/r"
START=$(date +%s)
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; TRAIN_END=${TRAIN_END:-400}
  STASH=${STASH:-.cache}; ROOMS=8
else
  DEV=cuda; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs 30"; TRAIN_END=${TRAIN_END:-520}
  STASH=/root/stash; ROOMS=512
  python3 -c "import pyroomacoustics" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/train/*.whl 2>&1 | tail -n 3
  export PYTHONPATH=/tmp/site:$PWD
fi
[ -f "$RUNS/r/kws-online_a/model.safetensors" ] || { echo "no online_a run: run o_train.sh first"; exit 3; }
export PYTHONUNBUFFERED=1
DEADLINE=$((START + TRAIN_END))
common=(--device $DEV --work /tmp/doxa --bank "$STASH/data13x" --out "$RUNS/r" --threads 2 $SM
        --workers 4 --rooms $ROOMS --online-mix --time-mask 10 --channel-mask 8 --skip-extra)
c1=0-4; c2=5-9; c3=10-15; [ "$SMOKE" = 1 ] && { c1=0-1; c2=0-1; c3=0-1; }
taskset -c $c1 python3 scripts/data13_train.py kws --run all --run-name kws-online_a-refit "${common[@]}" \
  --init-from "$RUNS/r/kws-online_a" --refit-on-val --epochs 2 --lr 0.001 > "$RUNS/r/kws-online_a-refit.log" 2>&1 &
for spec in "espeak:$c2" "mbrola:$c3"; do
  IFS=: read e cores <<< "$spec"
  taskset -c $cores python3 scripts/data13_train.py kws --run loeo-$e --run-name kws-online-loeo-$e "${common[@]}" \
    --front-end logmel $ARCH --lr 0.004 --dropout 0.2 --patch-size 160 --n-mels 40 \
    --deadline $DEADLINE > "$RUNS/r/kws-online-loeo-$e.log" 2>&1 &
done
wait
echo "trainings done at $(( $(date +%s) - START )) s"
for f in "$RUNS"/r/kws-online_a-refit.log "$RUNS"/r/kws-online-loeo-*.log; do echo "== $f"; grep -E "^epoch" "$f" | tail -n 3; tail -n 3 "$f"; done
rm -rf "$RUNS"/r/*/last
tar czf "$OUT/o4.tgz" -C "$RUNS" r/kws-online_a-refit r/kws-online-loeo-espeak r/kws-online-loeo-mbrola \
  r/kws-online_a-refit.log r/kws-online-loeo-espeak.log r/kws-online-loeo-mbrola.log
ls -la "$OUT"
