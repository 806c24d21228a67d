"""Soak: N real-time streams with churn against a real server for a set time.

Each stream sends real-time frames for a random 2-8 s, then either ends (its `final` offset
must equal every sample it sent) or drops the connection and resumes from the server's offset
(every tenth lifetime), then starts over. Every few seconds the server process's RSS and open
file descriptors and `s4d_sessions_active` are sampled. Prints one JSON document; exit status 1
if a sample was lost, a stream failed, or sessions leaked.
`python -m bench.soak --seconds 1800 --streams 16 [--checkpoints DIR --model NAME]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import websockets

from bench.serve import free_port

ROOT = Path(__file__).resolve().parent.parent



class Totals:
    def __init__(self):
        self.sessions = self.sent = self.lost = self.resumes = 0
        self.errors: list[str] = []
        self.latency: list[float] = []


async def one_stream(url: str, meta: dict, stop_at: float, tot: Totals, rng: random.Random):
    rate, frame, ch = meta["sample_rate"], meta["frame_size"], meta["input_channels"]
    start = {"type": "start", "sample_rate": rate, "encoding": "f32le", "channels": ch,
             "emit_every": frame}
    chunk = (np.random.default_rng(rng.randrange(1 << 30)).standard_normal((frame, ch)) * 0.2
             ).astype("<f4").tobytes()
    while time.monotonic() < stop_at:
        life = rng.uniform(2, 8)
        drop = rng.random() < 0.1
        sent = 0
        try:
            ws = await websockets.connect(url, ping_interval=None)
            await ws.send(json.dumps(start))
            sid = json.loads(await ws.recv())["session_id"]
            tot.sessions += 1
            t0 = time.monotonic()
            k = 0
            sent_at: dict[int, float] = {}
            while time.monotonic() - t0 < life:
                await asyncio.sleep(max(0, t0 + k * frame / rate - time.monotonic()))
                await ws.send(chunk)
                sent += frame
                sent_at[sent] = time.monotonic()
                k += 1
                while True:  # what has arrived: latency = frame sent -> its result
                    try:
                        m = json.loads(await asyncio.wait_for(ws.recv(), 0.001))
                    except asyncio.TimeoutError:
                        break
                    if m.get("type") == "result" and m["offset"] in sent_at:
                        tot.latency.append((time.monotonic() - sent_at.pop(m["offset"])) * 1e3)
            if drop:  # abrupt disconnect, then resume from what the server holds
                ws.transport.abort()
                tot.resumes += 1
                for _ in range(100):
                    ws = await websockets.connect(url, ping_interval=None)
                    await ws.send(json.dumps({**start, "session_id": sid}))
                    m = json.loads(await ws.recv())
                    if m.get("code") == "session_busy":
                        await ws.close()
                        await asyncio.sleep(0.05)
                        continue
                    break
                if m.get("type") != "started":
                    raise RuntimeError(f"resume failed: {m}")
                missing = sent - m["offset"]
                if missing:  # the stream is `chunk` repeated: resend its last `missing` samples
                    part = missing % frame
                    await ws.send((chunk[-part * 4 * ch:] if part else b"")
                                  + chunk * (missing // frame))
            await ws.send(json.dumps({"type": "end"}))
            final = None
            async for msg in ws:
                m = json.loads(msg)
                if m.get("type") == "final":
                    final = m
            tot.sent += sent
            got = final["offset"] if final else 0
            tot.lost += sent - got
            if final is None:
                tot.errors.append("no final")
        except Exception as exc:  # recorded, the soak goes on
            tot.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            await asyncio.sleep(0.5)


def metric(text: str, name: str) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name + "{"))


async def run(a) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "S4D_PORT": str(port),
           "S4D_LOG_LEVEL": "warning", "S4D_MODELS": a.model,
           "S4D_CHECKPOINTS": str(a.checkpoints), "S4D_IDLE_TTL_S": "5"}
    proc = subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            for _ in range(600):
                try:
                    if (await c.get(base + "/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
            meta = (await c.get(f"{base}/v1/models/{a.model}")).json()
            ps = psutil.Process(proc.pid)
            samples = []
            tot = Totals()
            stop_at = time.monotonic() + a.seconds
            rng = random.Random(0)
            url = f"ws://127.0.0.1:{port}/v1/models/{a.model}/stream"
            tasks = [asyncio.ensure_future(one_stream(url, meta, stop_at, tot,
                                                      random.Random(rng.random())))
                     for _ in range(a.streams)]
            t0 = time.monotonic()
            while not all(t.done() for t in tasks):
                text = (await c.get(base + "/metrics")).text
                samples.append({"t": round(time.monotonic() - t0, 1),
                                "rss_mb": round(ps.memory_info().rss / 2**20, 1),
                                "fds": ps.num_fds(),
                                "sessions": metric(text, "s4d_sessions_active")})
                await asyncio.sleep(a.every)
            await asyncio.gather(*tasks)
            await asyncio.sleep(6)  # past the idle TTL: nothing may stay behind
            text = (await c.get(base + "/metrics")).text
            left = metric(text, "s4d_sessions_active")
        lat = np.array(tot.latency or [np.nan])
        warm = [s for s in samples if s["t"] >= min(10, a.seconds / 3)] or samples
        res = {"seconds": a.seconds, "streams": a.streams, "model": a.model,
               "sessions": tot.sessions, "resumes": tot.resumes, "samples_sent": tot.sent,
               "samples_lost": tot.lost, "errors": tot.errors[:10], "error_count": len(tot.errors),
               "latency_ms": {"p50": round(float(np.nanpercentile(lat, 50)), 1),
                              "p99": round(float(np.nanpercentile(lat, 99)), 1)},
               "rss_mb": {"after_warmup": warm[0]["rss_mb"], "end": samples[-1]["rss_mb"],
                          "max": max(s["rss_mb"] for s in samples)},
               "fds": {"after_warmup": warm[0]["fds"], "end": samples[-1]["fds"],
                       "max": max(s["fds"] for s in samples)},
               "sessions_active_max": max(s["sessions"] for s in samples),
               "sessions_left_after_ttl": left, "samples": samples if a.trace else None}
        res["ok"] = tot.lost == 0 and not tot.errors and left == 0
        return res
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--model", default="kws-s4d")
    p.add_argument("--every", type=float, default=5.0, help="seconds between process samples")
    p.add_argument("--trace", action="store_true", help="include every sample in the output")
    a = p.parse_args()
    res = asyncio.run(run(a))
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
