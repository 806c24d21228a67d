#!/usr/bin/env bash
# Wait up to WAIT s for M1 and M2 to finish; return each run's weights under $OUT as soon as
# they are saved (before its evaluation), and everything (metrics, logs) at the end.
WAIT=${WAIT:-540}
for _ in $(seq 1 $((WAIT / 10))); do
  for r in M1 M2; do
    if [ -f /root/mp/$r/model.safetensors ] && [ ! -f "$OUT/${r}_weights.tgz" ]; then
      sleep 5; tar -C /root/mp -czf "$OUT/${r}_weights.tgz" $r && echo "$r weights returned"
    fi
  done
  grep -q "done in" /root/mp/M1.log && grep -q "done in" /root/mp/M2.log && break
  sleep 10
done
tar -C /root/mp -czf "$OUT/mp.tgz" .
tail -n 3 /root/mp/M1.log /root/mp/M2.log
