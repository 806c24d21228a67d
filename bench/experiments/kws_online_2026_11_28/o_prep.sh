#!/usr/bin/env bash
# Second warm call (after bench/experiments/kws_data_2026_11_27/p4a.sh stashed .cache/data13x):
# two preps. xf: the voice fold of the fourth session (training, validation and test clips:
# the fixed-clip reference trains on its training clips); xa: the shipped splits' validation,
# test and held-out clips only (the online runs mix their own training clips).
set -u
START=$(date +%s)
SMOKE=${SMOKE:-0}
FOLD="flite:slt festival:don_diphone rhvoice:bdl rhvoice:lyubov mbrola:mb-us1 mbrola:mb-gr2-en mbrola:mb-hu1-en"
if [ "$SMOKE" = 1 ]; then W=2; SM="--smoke"; STASH=${STASH:-.cache}; NV=40; NT=48; else
  W=8; SM=""; STASH=/root/stash; NV=1600; NT=12000
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/train/*.whl 2>&1 | tail -n 3
  export PYTHONPATH=/tmp/site:$PWD
fi
[ -d "$STASH/data13x" ] || { echo "no stashed bank: run bench/experiments/kws_data_2026_11_27/p4a.sh first"; exit 3; }
export PYTHONUNBUFFERED=1
hostname; nproc
prep() {  # name cores extra-args...
  local name=$1 cores=$2; shift 2
  rm -rf /tmp/do$name
  taskset -c $cores python3 scripts/data13_train.py prep-kws --bank "$STASH/data13x" --work /tmp/do$name \
    --workers $W $SM --n-train $NT --train-noise=-5,30,0.9 --silence-top-db -20 "$@" > /tmp/prepo_$name.log 2>&1 \
    || { tail -20 /tmp/prepo_$name.log; return 1; }
  echo "prep $name done at $(( $(date +%s) - START )) s: $(tail -c 300 /tmp/prepo_$name.log)"
}
[ "$SMOKE" = 1 ] && { C1=0-1; C2=0-1; } || { C1=0-7; C2=8-15; }
prep xf $C1 --n-val $NV --validate-on $FOLD --sets train val test &
prep xa $C2 --sets val test heldout phrases noise &
wait
ls /tmp/doxf /tmp/doxa | head -50 | tr '\n' ' '; echo
