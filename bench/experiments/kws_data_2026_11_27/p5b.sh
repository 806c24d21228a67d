#!/usr/bin/env bash
# Second of three warm calls: rebuild the banks from the stash (p4a.sh) and the carried
# vocabulary rows, then three preps (R: first pass, X: two passes, U: two passes + vocabulary).
set -u
START=$(date +%s)
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then W=2; SM="--smoke"; STASH=${STASH:-.cache}; else
  W=15; SM=""; STASH=/root/stash
  python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
fi
[ -d "$STASH/data13x" ] || { echo "no stashed bank: run bench/experiments/kws_data_2026_11_27/p4a.sh first"; exit 3; }
export PYTHONUNBUFFERED=1
B=/tmp/banks; rm -rf $B; mkdir -p $B
python bench/experiments/kws_data_2026_11_27/merge_bank.py merge "$STASH/data13x" .cache/data13v $B/u > /dev/null || exit 1
python bench/experiments/kws_data_2026_11_27/merge_bank.py first-pass "$STASH/data13x" $B/r > /dev/null || exit 1
cp -r "$STASH/data13x" $B/x
du -sb $B/*; hostname
for b in r u x; do
  rm -rf /tmp/d13$b
  taskset -c 0-15 python scripts/data13_train.py prep-kws --bank $B/$b --work /tmp/d13$b --workers $W $SM \
    --n-train ${N_TRAIN:-12000} --train-noise=-5,30,0.9 > /tmp/prep_$b.log 2>&1 || { tail -20 /tmp/prep_$b.log; exit 1; }
  echo "prep $b done at $(( $(date +%s) - START )) s: $(tail -c 300 /tmp/prep_$b.log)"
done
