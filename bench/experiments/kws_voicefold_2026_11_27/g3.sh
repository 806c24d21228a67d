#!/usr/bin/env bash
# Third warm call of the three-pass run: X3_F and X3_all at once (29 epochs, as the reference
# X_F), the decision of RULES.md against X_F (stashed by g2.sh), and on a go the refit of X3_all.
set -u
OUT=${OUT:-/tmp/g3}; mkdir -p "$OUT/r"
START=$(date +%s)
SMOKE=${SMOKE:-0}
FOLD="flite:slt festival:don_diphone rhvoice:bdl rhvoice:lyubov mbrola:mb-us1 mbrola:mb-gr2-en mbrola:mb-hu1-en"
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; TRAIN_END=${TRAIN_END:-300}; NV=40; TH=2; W=2
else
  DEV=cuda; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs 29"; TRAIN_END=${TRAIN_END:-440}; NV=1600; TH=16; W=15
  python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
RUNS="x3f:0-7 x3a:8-15"; [ "${ONLY_FOLD:-0}" = 1 ] && RUNS="x3f:0-15"
for spec in $RUNS; do b=${spec%%:*}; [ -f /tmp/dg$b/kws_sets.json ] || { echo "no prep $b: run g2.sh first"; exit 3; }; done
cp /tmp/prepg_*.log "$OUT/r/" 2>/dev/null
export PYTHONUNBUFFERED=1
DEADLINE=$((START + TRAIN_END))
BASE="--front-end logmel $ARCH --lr 0.004 --dropout 0.2 --patch-size 160 --n-mels 40 --time-mask 10 --channel-mask 8"
for spec in $RUNS; do
  IFS=: read b cores <<< "$spec"
  [ "$SMOKE" = 1 ] && cores=0-1
  taskset -c $cores python scripts/data13_train.py kws --run all --run-name kws-$b $BASE \
    --device $DEV --work /tmp/dg$b --out $OUT/r --threads 2 $SM \
    --deadline $DEADLINE > "$OUT/r/kws-$b.log" 2>&1 &
done
wait
echo "trainings done at $(( $(date +%s) - START )) s"
for f in "$OUT"/r/kws*.log; do echo "== $f"; head -n 2 "$f" | grep deadline; grep -E "^epoch" "$f" | tail -n 2; tail -n 2 "$f"; done
BANK=/tmp/banksg/x3 N_VAL=$NV UNIT=voice VALIDATE_ON="$FOLD" THREADS=$TH WORKERS=$W OUT_JSON="$OUT/r/paired.json" \
  python bench/experiments/kws_data_2026_11_27/paired.py X=/tmp/refF/kws-xf X3="$OUT/r/kws-x3f" 2>&1 | tail -n 3
GO=$(python - "$OUT/r/paired.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["val"]["X3-X"]
go = d["diff"] >= 0.5 and d["diff"] >= 2 * d["se"]
print(json.dumps(dict(rule="X3_F - X_F >= 0.5 points and >= 2 SE (by voice)", **d, go=go)), file=sys.stderr)
print(1 if go else 0)
PY
)
echo "decision: $GO at $(( $(date +%s) - START )) s"
echo "$GO" > "$OUT/r/go"
rm -rf "$OUT"/r/*/last
if [ "$GO" = 1 ] && [ "${ONLY_FOLD:-0}" != 1 ]; then
  taskset -c $([ "$SMOKE" = 1 ] && echo 0-1 || echo 0-15) python scripts/data13_train.py kws --run all \
    --run-name kws-x3a-refit --device $DEV --work /tmp/dgx3a --out "$OUT/r" --threads 2 $SM \
    --init-from "$OUT/r/kws-x3a" --refit-on-val --epochs 2 --lr 0.001 --time-mask 10 --channel-mask 8 \
    > "$OUT/r/kws-x3a-refit.log" 2>&1
  grep -E "^epoch" "$OUT/r/kws-x3a-refit.log" | tail -n 2; tail -n 2 "$OUT/r/kws-x3a-refit.log"
  rm -rf "$OUT"/r/*/last
fi
tar czf "$OUT/g3.tgz" -C "$OUT" r
echo "done at $(( $(date +%s) - START )) s"
