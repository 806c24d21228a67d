#!/usr/bin/env bash
# Third warm call: R_F, X_F and X_all at once on the preps of f2.sh (30 epochs planned), then the
# decision of RULES.md (paired.py on the fold's validation clips, bootstrap over voices) and, on
# a go, the refit of X_all (f4.sh; run here if the call has time left, else in a call of its own).
set -u
OUT=${OUT:-/tmp/f3}; mkdir -p "$OUT/r"
START=$(date +%s)
SMOKE=${SMOKE:-0}
FOLD="flite:slt festival:don_diphone rhvoice:bdl rhvoice:lyubov mbrola:mb-us1 mbrola:mb-gr2-en mbrola:mb-hu1-en"
HERE=bench/experiments/kws_voicefold_2026_11_27
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; TRAIN_END=${TRAIN_END:-300}; NV=40; TH=2; W=2
else
  DEV=cuda; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs 30"; TRAIN_END=${TRAIN_END:-450}; NV=1600; TH=16; W=15
  python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
for b in rf xf xa; do [ -f /tmp/df$b/kws_sets.json ] || { echo "no prep $b: run $HERE/f2.sh first"; exit 3; }; done
cp /tmp/prepf_*.log "$OUT/r/" 2>/dev/null
export PYTHONUNBUFFERED=1
DEADLINE=$((START + TRAIN_END))
BASE="--front-end logmel $ARCH --lr 0.004 --dropout 0.2 --patch-size 160 --n-mels 40 --time-mask 10 --channel-mask 8"
for spec in "rf:0-4" "xf:5-9" "xa:10-15"; do
  IFS=: read b cores <<< "$spec"
  [ "$SMOKE" = 1 ] && cores=0-1
  taskset -c $cores python scripts/data13_train.py kws --run all --run-name kws-$b $BASE \
    --device $DEV --work /tmp/df$b --out $OUT/r --threads 2 $SM \
    --deadline $DEADLINE > "$OUT/r/kws-$b.log" 2>&1 &
done
wait
echo "trainings done at $(( $(date +%s) - START )) s"
for f in "$OUT"/r/kws*.log; do echo "== $f"; grep -E "^epoch" "$f" | tail -n 2; tail -n 2 "$f"; done
BANK=/tmp/banksf/x N_VAL=$NV UNIT=voice VALIDATE_ON="$FOLD" THREADS=$TH WORKERS=$W OUT_JSON="$OUT/r/paired.json" \
  python bench/experiments/kws_data_2026_11_27/paired.py R="$OUT/r/kws-rf" X="$OUT/r/kws-xf" 2>&1 | tail -n 3
GO=$(python - "$OUT/r/paired.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["val"]["X-R"]
go = d["diff"] >= 0.5 and d["diff"] >= 2 * d["se"]
print("go" if go else "no", file=sys.stderr)
print(json.dumps(dict(rule="X_F - R_F >= 0.5 points and >= 2 SE (by voice)", **d, go=go)), file=sys.stderr)
print(1 if go else 0)
PY
)
echo "decision: $GO at $(( $(date +%s) - START )) s"
echo "$GO" > "$OUT/r/go"
rm -rf "$OUT"/r/*/last
if [ "$GO" = 1 ] && [ $(( $(date +%s) - START )) -lt ${REFIT_BEFORE:-480} ]; then
  OUT="$OUT" SMOKE=$SMOKE bash $HERE/f4.sh
else
  tar czf "$OUT/f3.tgz" -C "$OUT" r
fi
echo "done at $(( $(date +%s) - START )) s"
