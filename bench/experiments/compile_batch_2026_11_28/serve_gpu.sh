#!/usr/bin/env bash
# A real server on a GPU with and without --compile-batch: seconds to ready, the bundled
# kws_yes.wav's answer, and REST throughput with C concurrent clients posting 1 s clips for
# D seconds (the batcher groups them into one FFT forward per device job).
#   bash bench/experiments/compile_batch_2026_11_28/serve_gpu.sh PORT CLIENTS SECONDS [FLAGS...]
set -u
port=$1 clients=$2 seconds=$3; shift 3
PY=${PY:-python3}
t0=$(date +%s.%N)
"$PY" -m server --port "$port" --host 127.0.0.1 --device "${DEVICE:-cuda}" "$@" >"/tmp/serve_$port.log" 2>&1 &
pid=$!
trap 'kill $pid; wait $pid 2>/dev/null' EXIT
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.5; done
echo "flags: $* ready after $(python3 -c "import time; print(round(time.time() - $t0, 1))") s"
grep -i "compiled\|compil" "/tmp/serve_$port.log" | head -8
"$PY" - "$port" "$clients" "$seconds" <<'PY'
import asyncio, statistics, sys, time, httpx
port, clients, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
wav = open("server/static/samples/kws_yes.wav", "rb").read()
url = f"http://127.0.0.1:{port}/v1/models/kws-s4d/predict"
print("answer:", httpx.post(url, content=wav, headers={"content-type": "audio/wav"}, timeout=120).json()["predictions"][0]["label"])
# first requests of lengths the server has not seen (a compiled graph must not recompile)
import io, numpy as np, soundfile as sf
audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
for seconds_long in (0.5, 1.7, 2.9, 0.37):
    buf = io.BytesIO()
    sf.write(buf, np.resize(audio, int(seconds_long * rate)), rate, format="WAV", subtype="PCM_16")
    t = time.perf_counter()
    httpx.post(url, content=buf.getvalue(), headers={"content-type": "audio/wav"}, timeout=120).raise_for_status()
    print(f"first request of {seconds_long} s: {(time.perf_counter() - t) * 1e3:.0f} ms")

async def client(c, stop, lat):
    while time.perf_counter() < stop:
        t = time.perf_counter()
        r = await c.post(url, content=wav, headers={"content-type": "audio/wav"})
        r.raise_for_status()
        lat.append(time.perf_counter() - t)

async def main():
    lat = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        for _ in range(2):  # warm-up
            await asyncio.gather(*(c.post(url, content=wav, headers={"content-type": "audio/wav"}) for _ in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, t0 + seconds, lat) for _ in range(clients)))
        dt = time.perf_counter() - t0
    lat.sort()
    print(f"{clients} clients {dt:.1f} s: {len(lat) / dt:.0f} requests/s, p50 {statistics.median(lat) * 1e3:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f} ms")
asyncio.run(main())
PY
