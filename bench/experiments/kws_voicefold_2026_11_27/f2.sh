#!/usr/bin/env bash
# Second warm call (after bench/experiments/kws_data_2026_11_27/p4a.sh stashed .cache/data13x):
# three preps: R_F (one pass, voice fold), X_F (two passes, voice fold), X_all (two passes, the
# shipped splits). RULES.md says why.
set -u
START=$(date +%s)
SMOKE=${SMOKE:-0}
FOLD="flite:slt festival:don_diphone rhvoice:bdl rhvoice:lyubov mbrola:mb-us1 mbrola:mb-gr2-en mbrola:mb-hu1-en"
if [ "$SMOKE" = 1 ]; then W=2; SM="--smoke"; STASH=${STASH:-.cache}; NV=40; NT=${N_TRAIN:-48}; else
  W=15; SM=""; STASH=/root/stash; NV=1600; NT=${N_TRAIN:-12000}
  python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
fi
[ -d "$STASH/data13x" ] || { echo "no stashed bank: run bench/experiments/kws_data_2026_11_27/p4a.sh first"; exit 3; }
export PYTHONUNBUFFERED=1
B=/tmp/banksf; rm -rf $B; mkdir -p $B
python bench/experiments/kws_data_2026_11_27/merge_bank.py first-pass "$STASH/data13x" $B/r > /dev/null || exit 1
cp -r "$STASH/data13x" $B/x
du -sb $B/*; hostname
prep() {  # name bank extra-args...
  local name=$1 bank=$2; shift 2
  rm -rf /tmp/df$name
  taskset -c 0-15 python scripts/data13_train.py prep-kws --bank $bank --work /tmp/df$name --workers $W $SM \
    --n-train $NT --train-noise=-5,30,0.9 "$@" > /tmp/prepf_$name.log 2>&1 || { tail -20 /tmp/prepf_$name.log; exit 1; }
  echo "prep $name done at $(( $(date +%s) - START )) s: $(tail -c 200 /tmp/prepf_$name.log)"
}
prep rf $B/r --n-val $NV --validate-on $FOLD
prep xf $B/x --n-val $NV --validate-on $FOLD
prep xa $B/x
