#!/usr/bin/env bash
# Wait up to WAIT s (default 540) for the setsid run to finish; show its log's tail. Returns
# the run under $OUT as soon as its weights are on disk (saved before the evaluation), and
# again at the end, so a call cut off by the session's device time still brings them back.
WAIT=${WAIT:-540}; LOG=${LOG:-/root/e1/E1.log}
for _ in $(seq 1 $((WAIT / 10))); do
  if [ -f /root/e1/E1/model.safetensors ] && [ ! -f "$OUT/e1_weights.tgz" ]; then
    sleep 5; tar -C /root/e1 -czf "$OUT/e1_weights.tgz" . && echo "weights returned"
  fi
  grep -q "done in" "$LOG" && break
  sleep 10
done
tar -C /root/e1 -czf "$OUT/e1.tgz" .
tail -4 "$LOG"
