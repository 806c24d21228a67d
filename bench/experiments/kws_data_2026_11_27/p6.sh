#!/usr/bin/env bash
# R vs X on a validation set with four passes (data13w), one call after p4a.sh stashed data13x:
# merge, two preps, two trainings at once (16 epochs), no refit (bench/experiments/kws_data_2026_11_27/RULES.md).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/p6}; mkdir -p "$OUT/r"
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; W=2; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; STASH=${STASH:-.cache}; NV=40
else
  DEV=cuda; W=15; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs 16"; STASH=/root/stash; NV=1600
  python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
[ -d "$STASH/data13x" ] || { echo "no stashed bank: run bench/experiments/kws_data_2026_11_27/p4a.sh first"; exit 3; }
export PYTHONUNBUFFERED=1
B=/tmp/banks6; rm -rf $B; mkdir -p $B
python bench/experiments/kws_data_2026_11_27/merge_bank.py first-pass "$STASH/data13x" $B/r1 > /dev/null || exit 1
python bench/experiments/kws_data_2026_11_27/merge_bank.py merge $B/r1 .cache/data13w $B/r > /dev/null || exit 1
python bench/experiments/kws_data_2026_11_27/merge_bank.py merge "$STASH/data13x" .cache/data13w $B/x > /dev/null || exit 1
echo "banks at $(( $(date +%s) - START )) s"
for b in r x; do
  rm -rf /tmp/d6$b
  taskset -c 0-15 python scripts/data13_train.py prep-kws --bank $B/$b --work /tmp/d6$b --workers $W $SM \
    --n-train ${N_TRAIN:-12000} --n-val $NV --train-noise=-5,30,0.9 > "$OUT/r/prep_$b.log" 2>&1 || { tail -20 "$OUT/r/prep_$b.log"; exit 1; }
  echo "prep $b done at $(( $(date +%s) - START )) s"
done
DEADLINE=$((START + ${TRAIN_END:-530}))
BASE="--front-end logmel $ARCH --lr 0.004 --dropout 0.2 --patch-size 160 --n-mels 40 --time-mask 10 --channel-mask 8"
for spec in "r:0-7" "x:8-15"; do
  IFS=: read b cores <<< "$spec"
  [ "$SMOKE" = 1 ] && cores=0-1
  taskset -c $cores python scripts/data13_train.py kws --run all --run-name kws6-$b-all $BASE \
    --device $DEV --work /tmp/d6$b --out $OUT/r --threads 2 $SM \
    --deadline $DEADLINE > "$OUT/r/kws6-$b-all.log" 2>&1 &
done
wait
echo "trainings done at $(( $(date +%s) - START )) s"
for f in "$OUT"/r/kws6*.log; do echo "== $f"; grep -E "^epoch" "$f" | tail -n 2; tail -n 2 "$f"; done
rm -rf "$OUT"/r/*/last
tar czf "$OUT/p6.tgz" -C "$OUT" r && rm -rf "$OUT/r"
echo "done at $(( $(date +%s) - START )) s"
