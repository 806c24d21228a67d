#!/usr/bin/env bash
# Later calls: follow run.sh for up to WAIT seconds; when it is done, its archive goes to $OUT.
set -u
WAIT=${WAIT:-540}
START=$(date +%s)
while [ ! -f /root/vout/done ] && [ $(( $(date +%s) - START )) -lt $WAIT ]; do sleep 10; done
cat /root/vout/run.log
for f in /root/vout/r/kws-*.log; do echo "== $f"; grep -E "^epoch" "$f" | tail -n 1; done
[ -f /root/vout/done ] && cp /root/vout/v.tgz "$OUT/" && echo "archive in OUT"
