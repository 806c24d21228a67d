"""REST throughput against a real server: C keep-alive connections post one clip back to back.

For each `--workers` value a fresh `s4d serve` (bench.serve.ServerProcess; 0 = one process)
is started on loopback, warmed up, and loaded for `--seconds` by `--procs` load-generator
processes over raw HTTP/1.1 sockets (httpx's connection pool, not the server, dominated the
tail of an earlier generator: bench/RESULTS.md). Reports requests/s, latency percentiles and
non-200 answers, one JSON line per run.

    python -m bench.rest_load --workers 0 4 --connections 64 --procs 4 --seconds 10 [--device cuda]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.serve import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def request_bytes(port: int, model: str, body: bytes) -> bytes:
    head = (f"POST /v1/models/{model}/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: audio/wav\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _connection(port: int, req: bytes, stop: float, lat: list, bad: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(req)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                lat.append(time.perf_counter() - t0)
            else:
                bad.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    finally:
        writer.close()


def _generator(port: int, req: bytes, connections: int, start: float, seconds: float,
               out: mp.Queue) -> None:
    """One load-generator process: `connections` sockets from `start` for `seconds`."""
    lat: list[float] = []
    bad: list[str] = []

    async def run() -> None:
        await asyncio.sleep(max(0.0, start - time.time()))
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(_connection(port, req, stop, lat, bad) for _ in range(connections)))

    asyncio.run(run())
    out.put((lat, bad))


def load(port: int, req: bytes, connections: int, procs: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    start = time.time() + 1.0  # every generator starts together
    per = [connections // procs + (i < connections % procs) for i in range(procs)]
    workers = [ctx.Process(target=_generator, args=(port, req, c, start, seconds, out))
               for c in per if c]
    for w in workers:
        w.start()
    lat: list[float] = []
    bad: list[str] = []
    for _ in workers:
        one_lat, one_bad = out.get(timeout=seconds + 120)
        lat += one_lat
        bad += one_bad
    for w in workers:
        w.join(10)
    a = np.sort(np.array(lat)) * 1e3
    pct = {f"p{q}_ms": round(float(np.percentile(a, q)), 1) if len(a) else None
           for q in (50, 90, 99)}
    return {"requests_per_s": round(len(lat) / seconds, 1), **pct, "non_200": len(bad),
            "non_200_first": bad[:3]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--model", default="kws-s4d")
    ap.add_argument("--wav", type=Path, default=ROOT / "server/static/samples/kws_yes.wav")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="a server setting, e.g. S4D_COMPILE_BATCH=true")
    args = ap.parse_args(argv)
    body = args.wav.read_bytes()
    extra = dict(kv.split("=", 1) for kv in args.env)
    for w in args.workers:
        log = os.path.join(tempfile.gettempdir(), f"rest_load_{w}.log")
        server = ServerProcess(str(ROOT / "checkpoints"), args.model, 64,
                               {**extra, "S4D_WORKERS": str(w)}, args.device, log)
        try:
            t0 = time.perf_counter()
            server.wait_ready(300)
            ready_s = time.perf_counter() - t0
            req = request_bytes(server.port, args.model, body)
            load(server.port, req, min(args.connections, 8), 1, 2.0)  # warm-up
            row = {"workers": w, "device": args.device or "auto", "model": args.model,
                   "connections": args.connections, "procs": args.procs,
                   "seconds": args.seconds, "env": extra, "ready_s": round(ready_s, 1),
                   **load(server.port, req, args.connections, args.procs, args.seconds)}
            print(json.dumps(row), flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
