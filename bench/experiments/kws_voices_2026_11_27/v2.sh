#!/usr/bin/env bash
# Second call: stash mbrola / festival with the extra voices (carried as .cache/bankB), start
# run.sh detached (it outlives the call), and follow it for up to WAIT seconds.
set -u
WAIT=${WAIT:-540}
mkdir -p /root/stash && rm -rf /root/stash/bankB && cp -r .cache/bankB /root/stash/bankB
rm -rf /root/vout /root/vtree; mkdir -p /root/vout; cp -r . /root/vtree  # the tree outlives the call
cd /root/vtree && setsid nohup bash bench/experiments/kws_voices_2026_11_27/run.sh > /root/vout/run.log 2>&1 < /dev/null &
START=$(date +%s)
while [ ! -f /root/vout/done ] && [ $(( $(date +%s) - START )) -lt $WAIT ]; do sleep 10; done
cat /root/vout/run.log
