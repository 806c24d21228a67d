#!/usr/bin/env bash
# First call: stash the four unchanged engines of the bank (carried as .cache/bankA, 39 MB) and
# install the wheels the GPU image lacks; the carry limit keeps the rest for the second call.
set -u
mkdir -p /root/stash && rm -rf /root/stash/bankA && cp -r .cache/bankA /root/stash/bankA
python -m pip install -q --no-deps --no-index .whl/ev/*.whl .whl/pra/*.whl 2>&1 | grep -v "root. user" | tail -n 3
du -sh /root/stash/*; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
