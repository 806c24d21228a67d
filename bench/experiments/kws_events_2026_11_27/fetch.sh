#!/usr/bin/env bash
# Return the run (config, weights, metrics, log) under $OUT.
set -eu
tar -C /root/e1 -czf "$OUT/e1.tgz" . && ls -la "$OUT"
