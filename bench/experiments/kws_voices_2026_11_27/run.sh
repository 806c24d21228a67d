#!/usr/bin/env bash
# The whole experiment of RULES.md on the GPU machine, meant to run detached (v2.sh starts it
# with setsid; poll.sh watches, fetch.sh packs): banks X and M from the stashed parts, three
# preps, three trainings at once to one deadline, the decision (paired.py), and on a go the
# refit of M_all. Everything lands in $OUT/r (default /root/vout/r).
set -u
# not $OUT: the device tool sets that to its call folder and empties it at every call
OUT=${VOUT:-/root/vout}; mkdir -p "$OUT/r"
START=$(date +%s)
SMOKE=${SMOKE:-0}
STASH=${STASH:-/root/stash}
HERE=bench/experiments/kws_voices_2026_11_27
FOLD="flite:slt festival:don_diphone rhvoice:bdl rhvoice:lyubov mbrola:mb-us1 mbrola:mb-gr2-en mbrola:mb-hu1-en"
if [ "$SMOKE" = 1 ]; then
  DEV=cpu; SM="--smoke"; ARCH="--d-model 16 --n-layers 2 --batch-size 16 --epochs 2"; TRAIN_END=${TRAIN_END:-240}
  NV=40; NT=48; TH=2; W=2; CORES_ALL=0-1
else
  DEV=cuda; SM=""; ARCH="--d-model 192 --n-layers 6 --batch-size 256 --epochs ${EPOCHS:-30}"; TRAIN_END=${TRAIN_END:-450}
  NV=1600; NT=${N_TRAIN:-12000}; TH=16; W=15; CORES_ALL=0-15
  python -c "import pyroomacoustics" 2>/dev/null || python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
export PYTHONUNBUFFERED=1
say() { echo "[$(( $(date +%s) - START )) s] $*"; }
B=/tmp/bv; rm -rf $B; mkdir -p $B/x $B/m
cp "$STASH"/bankA/kws_* $B/x/ && cp "$STASH"/bankA/kws_* $B/m/ && cp "$STASH"/bankB/kws_* $B/m/ || exit 2
python $HERE/base_rows.py $B/m $B/x mbrola festival || exit 2
say "banks: $(du -sb $B/x $B/m | tr '\n' ' ')"
prep() {  # name bank extra-args...
  local name=$1 bank=$2; shift 2
  rm -rf /tmp/dv$name
  taskset -c $CORES_ALL python scripts/data13_train.py prep-kws --bank $bank --work /tmp/dv$name --workers $W $SM \
    --n-train $NT --train-noise=-5,30,0.9 --silence-top-db -20 "$@" > "$OUT/r/prep_$name.log" 2>&1 || { tail -20 "$OUT/r/prep_$name.log"; exit 1; }
  say "prep $name done: $(tail -c 160 "$OUT/r/prep_$name.log")"
}
if [ "${SKIP_PREP:-0}" = 1 ]; then say "preps kept from the run before"; else
prep xf $B/x --n-val $NV --validate-on $FOLD
prep mf $B/m --n-val $NV --validate-on $FOLD
[ "${ONLY_FOLD:-0}" = 1 ] || prep ma $B/m
fi
DEADLINE=$(( $(date +%s) + TRAIN_END ))
BASE="--front-end logmel $ARCH --lr 0.004 --dropout 0.2 --patch-size 160 --n-mels 40 --time-mask 10 --channel-mask 8"
SPECS="xf:0-4 mf:5-9 ma:10-15"; [ "${ONLY_FOLD:-0}" = 1 ] && SPECS="xf:0-7 mf:8-15"
for spec in $SPECS; do
  IFS=: read b cores <<< "$spec"
  [ "$SMOKE" = 1 ] && cores=0-1
  taskset -c $cores python scripts/data13_train.py kws --run all --run-name kws-$b $BASE \
    --device $DEV --work /tmp/dv$b --out "$OUT/r" --threads 2 $SM \
    --deadline $DEADLINE > "$OUT/r/kws-$b.log" 2>&1 &
done
wait
say "trainings done"
for f in "$OUT"/r/kws-*.log; do echo "== $f"; grep -E "^epoch" "$f" | tail -n 2; tail -n 2 "$f"; done
BANK=$B/m N_VAL=$NV UNIT=voice VALIDATE_ON="$FOLD" THREADS=$TH WORKERS=$W OUT_JSON="$OUT/r/paired.json" \
  python bench/experiments/kws_data_2026_11_27/paired.py X="$OUT/r/kws-xf" M="$OUT/r/kws-mf" 2>&1 | tail -n 3
GO=$(python - "$OUT/r/paired.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["val"]["M-X"]
go = d["diff"] >= 0.5 and d["diff"] >= 2 * d["se"]
print(json.dumps(dict(rule="M_F - X_F >= 0.5 points and >= 2 SE (by voice)", **d, go=go)), file=sys.stderr)
print(1 if go else 0)
PY
)
say "decision: $GO"
echo "$GO" > "$OUT/r/go"
if [ "$GO" = 1 ] && [ "${ONLY_FOLD:-0}" != 1 ]; then
  taskset -c $CORES_ALL python scripts/data13_train.py kws --run all --run-name kws-ma-refit --device $DEV \
    --work /tmp/dvma --out "$OUT/r" --threads 2 $SM --init-from "$OUT/r/kws-ma" --refit-on-val \
    --epochs 2 --lr 0.001 --time-mask 10 --channel-mask 8 > "$OUT/r/kws-ma-refit.log" 2>&1
  grep -E "^epoch" "$OUT/r/kws-ma-refit.log" | tail -n 2; tail -n 2 "$OUT/r/kws-ma-refit.log"
  say "refit done"
fi
rm -rf "$OUT"/r/*/last
tar czf "$OUT/v.tgz" -C "$OUT" r
say "done"
touch "$OUT/done"
