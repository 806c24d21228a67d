#!/usr/bin/env bash
# REST throughput: a server from checkout $1 (absolute path) on port $2, label $3; 16 clients
# post the bundled 1 s kws WAV back to back for 10 s (after a 2 s warm-up); requests/s and
# latency percentiles. The load generator shares the machine's cores with the server.
source "$(dirname "$0")/serve_checkout.sh"
"$PY" - "$2" "$3" "$1" <<'PY'
import asyncio, sys, time
import httpx, numpy as np
port, label, root = sys.argv[1], sys.argv[2], sys.argv[3]
wav = open(root + "/server/static/samples/kws_yes.wav", "rb").read()
url = f"http://127.0.0.1:{port}/v1/models/kws-s4d/predict"

async def client(c, until, lat):
    while time.perf_counter() < until:
        t = time.perf_counter()
        r = await c.post(url, content=wav, headers={"content-type": "audio/wav"})
        r.raise_for_status()
        lat.append(time.perf_counter() - t)

async def main():
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as c:
        await asyncio.gather(*(client(c, time.perf_counter() + 2, []) for _ in range(16)))
        lat, t0 = [], time.perf_counter()
        await asyncio.gather(*(client(c, t0 + 10, lat) for _ in range(16)))
        dt = time.perf_counter() - t0
    p = np.percentile(np.array(lat) * 1e3, [50, 90, 99])
    print(f"{label}: {len(lat) / dt:.1f} requests/s, latency p50 {p[0]:.0f} / p90 {p[1]:.0f} / p99 {p[2]:.0f} ms")

asyncio.run(main())
PY
