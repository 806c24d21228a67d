#!/usr/bin/env bash
# Leave-one-engine-out runs of the shipped recipe (two-pass bank), for kws-s4d's card, two at once:
#   PREP=1 bash loeo.sh flite festival     # (after kws_data_2026_11_27/p4a.sh) prep, then two runs
#   bash loeo.sh pico rhvoice              # the next warm call: two more on the same prep
# Each run: the first-stage recipe from scratch on the other five engines, 30 epochs planned, best
# epoch on their own engines' validation voices; $OUT/loeo.tgz holds the runs.
set -u
OUT=${OUT:-/tmp/loeo}; mkdir -p "$OUT/r"
START=$(date +%s)
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; W=2; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; STASH=${STASH:-.cache}; NT=${N_TRAIN:-48}
else
  DEV=cuda; W=15; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs 30"; STASH=/root/stash; NT=${N_TRAIN:-12000}
  python -c "import pyroomacoustics" 2>/dev/null || python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
export PYTHONUNBUFFERED=1
if [ "${PREP:-0}" = 1 ]; then
  [ -d "$STASH/data13x" ] || { echo "no stashed bank: run bench/experiments/kws_data_2026_11_27/p4a.sh first"; exit 3; }
  rm -rf /tmp/dl
  taskset -c 0-15 python scripts/data13_train.py prep-kws --bank "$STASH/data13x" --work /tmp/dl --workers $W $SM \
    --n-train $NT --train-noise=-5,30,0.9 > "$OUT/r/prep.log" 2>&1 || { tail -20 "$OUT/r/prep.log"; exit 1; }
  echo "prep done at $(( $(date +%s) - START )) s"
fi
[ -f /tmp/dl/kws_sets.json ] || { echo "no prep: PREP=1 first"; exit 3; }
DEADLINE=$((START + ${TRAIN_END:-520}))
BASE="--front-end logmel $ARCH --lr 0.004 --dropout 0.2 --patch-size 160 --n-mels 40 --time-mask 10 --channel-mask 8"
i=0
for e in "$@"; do
  cores=$([ "$SMOKE" = 1 ] && echo 0-1 || echo $((8 * i))-$((8 * i + 7)))
  taskset -c $cores python scripts/data13_train.py kws --run loeo-$e --run-name kws-loeo-$e $BASE \
    --device $DEV --bank "$STASH/data13x" --work /tmp/dl --out $OUT/r --threads 2 $SM \
    --deadline $DEADLINE > "$OUT/r/kws-loeo-$e.log" 2>&1 &
  i=$((i + 1))
done
wait
for f in "$OUT"/r/kws*.log; do echo "== $f"; head -n 3 "$f" | grep deadline; grep -E "^epoch" "$f" | tail -n 1; tail -n 2 "$f"; done
rm -rf "$OUT"/r/*/last
tar czf "$OUT/loeo.tgz" -C "$OUT" r && rm -rf "$OUT/r"
echo "done at $(( $(date +%s) - START )) s"
