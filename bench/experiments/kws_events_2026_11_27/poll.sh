#!/usr/bin/env bash
# Wait up to WAIT s (default 540) for the setsid run to finish; show its log's tail.
WAIT=${WAIT:-540}; LOG=${LOG:-/root/e1/E1.log}
for _ in $(seq 1 $((WAIT / 10))); do grep -q "done in" "$LOG" && break; sleep 10; done
tail -4 "$LOG"
