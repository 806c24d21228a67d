#!/usr/bin/env bash
# Second warm call of the three-pass run (after kws_data_2026_11_27/p4a.sh stashed
# .cache/data13x): merge the carried third pass (.cache/data13p3) onto it, stash the carried
# reference checkpoint X_F (.cache/runsF/r/kws-xf), then two preps: X3_F (voice fold) and X3_all
# (ONLY_FOLD=1: X3_F only).
set -u
START=$(date +%s)
SMOKE=${SMOKE:-0}
FOLD="flite:slt festival:don_diphone rhvoice:bdl rhvoice:lyubov mbrola:mb-us1 mbrola:mb-gr2-en mbrola:mb-hu1-en"
if [ "$SMOKE" = 1 ]; then W=2; SM="--smoke"; STASH=${STASH:-.cache}; NV=40; NT=${N_TRAIN:-48}; else
  W=15; SM=""; STASH=/root/stash; NV=1600; NT=${N_TRAIN:-12000}
  python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
fi
[ -d "$STASH/data13x" ] || { echo "no stashed bank: run bench/experiments/kws_data_2026_11_27/p4a.sh first"; exit 3; }
[ -f .cache/runsF/r/kws-xf/model.safetensors ] || { echo "carry .cache/runsF/r/kws-xf"; exit 3; }
mkdir -p /tmp/refF && rm -rf /tmp/refF/kws-xf && cp -r .cache/runsF/r/kws-xf /tmp/refF/
export PYTHONUNBUFFERED=1
B=/tmp/banksg; rm -rf $B; mkdir -p $B
python bench/experiments/kws_data_2026_11_27/merge_bank.py merge "$STASH/data13x" .cache/data13p3 $B/x3 > /dev/null || exit 1
du -sb $B/*; hostname
prep() {  # name bank extra-args...
  local name=$1 bank=$2; shift 2
  rm -rf /tmp/dg$name
  taskset -c 0-15 python scripts/data13_train.py prep-kws --bank $bank --work /tmp/dg$name --workers $W $SM \
    --n-train $NT --train-noise=-5,30,0.9 "$@" > /tmp/prepg_$name.log 2>&1 || { tail -20 /tmp/prepg_$name.log; exit 1; }
  echo "prep $name done at $(( $(date +%s) - START )) s: $(tail -c 160 /tmp/prepg_$name.log)"
}
prep x3f $B/x3 --n-val $NV --validate-on $FOLD
[ "${ONLY_FOLD:-0}" = 1 ] || prep x3a $B/x3
