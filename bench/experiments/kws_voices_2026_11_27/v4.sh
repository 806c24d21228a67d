#!/usr/bin/env bash
# One call (the amendment in RULES.md): stash mbrola / festival with the extra voices (carried
# as .cache/bankB; bankA stashed by v1.sh), run.sh in the foreground at half scale, fold only.
set -u
mkdir -p /root/stash && rm -rf /root/stash/bankB && cp -r .cache/bankB /root/stash/bankB
CALL_OUT=$OUT
N_TRAIN=6000 EPOCHS=20 ONLY_FOLD=1 TRAIN_END=${TRAIN_END:-240} VOUT=/root/vout bash bench/experiments/kws_voices_2026_11_27/run.sh
cp /root/vout/v.tgz "$CALL_OUT/" 2>/dev/null
