#!/usr/bin/env bash
# Third warm call: R-all / X-all / U-all at once on the preps of p5b.sh (30 epochs planned, all
# should finish), then the refit of the better of X / U if it passes the go rule
# (bench/experiments/kws_data_2026_11_27/RULES.md).
set -u
OUT=${OUT:-/tmp/p5}; mkdir -p "$OUT/r"
START=$(date +%s)
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; TRAIN_END=${TRAIN_END:-300}
else
  DEV=cuda; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs 30"; TRAIN_END=${TRAIN_END:-445}
  python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
for b in r x u; do [ -f /tmp/d13$b/kws_sets.json ] || { echo "no prep $b: run bench/experiments/kws_data_2026_11_27/p5b.sh first"; exit 3; }; done
cp /tmp/prep_*.log "$OUT/r/" 2>/dev/null
export PYTHONUNBUFFERED=1
DEADLINE=$((START + TRAIN_END))
BASE="--front-end logmel $ARCH --lr 0.004 --dropout 0.2 --patch-size 160 --n-mels 40 --time-mask 10 --channel-mask 8"
for spec in "r:0-4" "x:5-9" "u:10-15"; do
  IFS=: read b cores <<< "$spec"
  [ "$SMOKE" = 1 ] && cores=0-1
  taskset -c $cores python scripts/data13_train.py kws --run all --run-name kws-$b-all $BASE \
    --device $DEV --work /tmp/d13$b --out $OUT/r --threads 2 $SM \
    --deadline $DEADLINE > "$OUT/r/kws-$b-all.log" 2>&1 &
done
wait
echo "trainings done at $(( $(date +%s) - START )) s"
PICK=$(python - "$OUT/r" <<'PY'
import json, os, sys
r = sys.argv[1]
val = {b: json.load(open(f"{r}/kws-{b}-all/metrics.json"))["val_accuracy"] for b in "rxu"}
best = max("xu", key=lambda b: val[b])
go = val[best] >= val["r"] + float(os.environ.get("GO_MARGIN", "0.01"))
print(json.dumps(val), "pick", best, "go", go, file=sys.stderr)
print(best if go else "")
PY
)
if [ -n "$PICK" ]; then
  echo "refit kws-$PICK-all from $(( $(date +%s) - START )) s"
  taskset -c $([ "$SMOKE" = 1 ] && echo 0-1 || echo 0-15) python scripts/data13_train.py kws --run all \
    --run-name kws-$PICK-all-refit --device $DEV --work /tmp/d13$PICK --out $OUT/r --threads 2 $SM \
    --init-from "$OUT/r/kws-$PICK-all" --refit-on-val --epochs 2 --lr 0.001 --time-mask 10 --channel-mask 8 \
    > "$OUT/r/kws-$PICK-all-refit.log" 2>&1
fi
for f in "$OUT"/r/kws*.log; do echo "== $f"; grep -E "^epoch" "$f" | tail -n 2; tail -n 2 "$f"; done
rm -rf "$OUT"/r/*/last
tar czf "$OUT/p5.tgz" -C "$OUT" r && rm -rf "$OUT/r"
echo "done at $(( $(date +%s) - START )) s"
