#!/usr/bin/env bash
# The refit of X_all after a go (RULES.md): train + validation voices, 2 epochs, lr 0.001, the
# last epoch kept, as the shipped kws-s4d's refit; then everything under $OUT/r as one archive.
set -u
OUT=${OUT:-/tmp/f3}
START=$(date +%s)
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then DEV=cpu; SM="--smoke"; CORES=0-1; else
  DEV=cuda; SM=""; CORES=0-15
  python -c "import pyroomacoustics" 2>/dev/null || python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | tail -n 3
fi
[ -f "$OUT/r/kws-xa/model.safetensors" ] || { echo "no X_all run in $OUT/r: run f3.sh first"; exit 3; }
export PYTHONUNBUFFERED=1
taskset -c $CORES python scripts/data13_train.py kws --run all --run-name kws-xa-refit --device $DEV \
  --work /tmp/dfxa --out "$OUT/r" --threads 2 $SM --init-from "$OUT/r/kws-xa" --refit-on-val \
  --epochs 2 --lr 0.001 --time-mask 10 --channel-mask 8 > "$OUT/r/kws-xa-refit.log" 2>&1
grep -E "^epoch" "$OUT/r/kws-xa-refit.log" | tail -n 2; tail -n 2 "$OUT/r/kws-xa-refit.log"
echo "refit done in $(( $(date +%s) - START )) s"
rm -rf "$OUT"/r/*/last
tar czf "$OUT/f3.tgz" -C "$OUT" r
