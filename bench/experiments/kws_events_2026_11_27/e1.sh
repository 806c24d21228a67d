#!/usr/bin/env bash
# E1, call 2: the stream bank (.cache/s15k: words.npz + rirs.npz of .cache/stream15) and the
# wheels come with this call; training runs in its own process session (setsid), so it goes
# on across calls until the machine goes back; poll.sh watches it, fetch.sh returns it.
set -eu
BUDGET=${BUDGET:-1450}
python -m pip install -q --no-deps --no-index .whl/ev/*.whl
rm -rf /root/s15k && cp -r .cache/s15k /root/s15k
rm -rf /root/e1 && mkdir -p /root/e1
# the code and checkpoint the run reads stay put while later calls replace the tree
rm -rf /root/code && mkdir -p /root/code && cp -r model checkpoints /root/code/
cd /root/code && setsid nohup python -m model.train_streams kws-events --bank /root/s15k \
  --device cuda --keyword-prob 0.35 --extra-words /root/stash/ew --budget-s "$BUDGET" \
  --out /root/e1/E1 > /root/e1/E1.log 2>&1 < /dev/null &
sleep 90; tail -5 /root/e1/E1.log
