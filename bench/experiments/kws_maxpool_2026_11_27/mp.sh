#!/usr/bin/env bash
# M1 and M2 from B4 on one GPU, each in its own process session (setsid) so that they go on
# across calls while the machine is held; this call waits WAIT s and returns whatever is done.
set -eu
BUDGET=${BUDGET:-420}; WAIT=${WAIT:-480}
python -m pip install -q --no-deps --no-index .whl/ev/*.whl
rm -rf /root/s15k /root/d13t5 /root/mp /root/code && mkdir -p /root/mp /root/code
cp -r .cache/s15k /root/s15k && cp -r .cache/d13t5 /root/d13t5
cp -r model checkpoints /root/code/  # later calls replace the tree; the runs read this copy
cd /root/code
for run in "M1 1,1" "M2 3,3"; do
  set -- $run
  setsid nohup python -m model.train_streams kws-events --bank /root/s15k --device cuda \
    --init-from checkpoints/kws-events-s4d --keyword-prob 0.35 --lr 0.0003 \
    --extra-words /root/d13t5 --maxpool "$2" --budget-s "$BUDGET" --out "/root/mp/$1" \
    > "/root/mp/$1.log" 2>&1 < /dev/null &
done
sleep 60; nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
tail -n 2 /root/mp/M1.log /root/mp/M2.log
WAIT=$((WAIT - 60)) bash "$OLDPWD/bench/experiments/kws_maxpool_2026_11_27/poll.sh"
