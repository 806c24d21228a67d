#!/usr/bin/env bash
# REST latency end to end: a server from checkout $1 (absolute path) on port $2, label $3, 30 sequential predicts of the
# 1 s kws sample WAV (after 3 warm-ups), median and p90 in ms.
source "$(dirname "$0")/serve_checkout.sh"
"$PY" - "$2" "$3" "$1" <<'PY'
import sys, time, statistics, httpx
port, label = sys.argv[1], sys.argv[2]
wav = open(sys.argv[3] + "/server/static/samples/kws_yes.wav", "rb").read()
url = f"http://127.0.0.1:{port}/v1/models/kws-s4d/predict"
with httpx.Client() as c:
    for _ in range(3):
        c.post(url, content=wav, headers={"content-type": "audio/wav"}).raise_for_status()
    ts = []
    for _ in range(30):
        t = time.perf_counter(); r = c.post(url, content=wav, headers={"content-type": "audio/wav"}); ts.append(time.perf_counter() - t)
        r.raise_for_status()
    ts.sort()
    print(label, "median %.1f ms, p90 %.1f ms" % (statistics.median(ts) * 1e3, ts[26] * 1e3), r.json()["outputs"][0]["label"] if "outputs" in r.json() else str(r.json())[:100])
PY
