#!/usr/bin/env bash
# E1, call 1 of 2: the extra words (.cache/ewA + .cache/ewB, 51 MB) stay on the warm machine.
set -eu
mkdir -p /root/stash && rm -rf /root/stash/ew && mkdir -p /root/stash/ew
cp .cache/ewA/* .cache/ewB/* /root/stash/ew/
du -sb /root/stash/ew; hostname; nvidia-smi --query-gpu=name --format=csv,noheader
