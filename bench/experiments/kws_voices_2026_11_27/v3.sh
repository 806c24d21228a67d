#!/usr/bin/env bash
# Restart run.sh detached with the preps already made (SKIP_PREP=1), writing under /root/vout;
# the first start wrote under the call folder, which the next call emptied.
set -u
pkill -f "bench/experiments/kws_voices_2026_11_27/run.sh"; pkill -f "data13_train.py kws"; sleep 3
mkdir -p /root/vout/old && mv /root/vout/run.log /root/vout/old/ 2>/dev/null
rm -rf /root/vout/r /root/vout/done /root/vtree; cp -r . /root/vtree
cd /root/vtree && SKIP_PREP=1 VOUT=/root/vout setsid nohup bash bench/experiments/kws_voices_2026_11_27/run.sh > /root/vout/run.log 2>&1 < /dev/null &
sleep 45; cat /root/vout/run.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
