"""Streams before batch: a real-time kws stream's latency while one long `/predict` runs.

Starts `s4d serve` (this tree, or `--tree DIR` for another checkout, e.g. the single-process
server before the engine split), streams one real-time kws stream (20 ms frames, a result per
frame) for `--seconds`, and after 2 s posts one sequence of `--samples` samples (NPY, or a JSON
array with `--format json`). Reports the stream's latency (send of a frame -> its result) while
the predict runs, and the predict's time. `--workers W` serves with W front-ends; `--env K=V`
passes server settings.
`python -m bench.hol --samples 10000000 [--tree .baseline] [--json]`,
`python -m bench.hol --samples 1500000 --format json --workers 1 [--env S4D_DECODE_PROCESS_MIN_BYTES=0]`
`python -m bench.hol --samples 2400000 --format grpc --workers 1 [--tree .baseline]`
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import websockets

from bench.serve import free_port, loop_stalls, scrape_metrics

ROOT = Path(__file__).resolve().parent.parent



async def stream(url: str, seconds: float, marks: dict) -> list[tuple[float, float]]:
    frame, rate = 320, 16000
    sig = (np.sin(np.arange(rate) / 7.0) * 3000).astype("<i2")
    out: list[tuple[float, float]] = []
    # no keepalive pings: a server that stalls must show up as latency, not as a dropped socket
    async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "encoding": "pcm_s16le",
                                  "channels": 1, "emit_every": frame}))
        json.loads(await ws.recv())
        sent: dict[int, float] = {}

        async def reader():
            async for msg in ws:
                m = json.loads(msg)
                if m.get("type") == "result" and m["offset"] in sent:
                    out.append((sent[m["offset"]], time.monotonic() - sent[m["offset"]]))
                if m.get("type") == "final":
                    return

        task = asyncio.ensure_future(reader())
        t0 = time.monotonic()
        n = int(seconds * rate / frame)
        try:
            for k in range(n):
                due = t0 + k * frame / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                sent[(k + 1) * frame] = time.monotonic()
                i = (k * frame) % (rate - frame)
                await ws.send(sig[i:i + frame].tobytes())
            await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(task, 600)
        except websockets.ConnectionClosed as exc:  # the server gave up on the stream
            marks["closed"] = {"at_s": round(time.monotonic() - t0, 1),
                               "code": exc.rcvd.code if exc.rcvd else None,
                               "reason": exc.rcvd.reason if exc.rcvd else None}
    return out


def grpc_infer(port: int, body: bytes, size: int) -> str:
    """One ModelInfer of a serialized request; its gRPC status name."""
    import grpc

    from server.proto import grpc_service_pb2 as pb
    from server.proto import grpc_service_pb2_grpc as pb_grpc

    opts = [("grpc.max_send_message_length", size + (1 << 20)),
            ("grpc.max_receive_message_length", 1 << 26)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:
        try:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                pb.ModelInferRequest.FromString(body), timeout=900)
            return "OK"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tree", default=str(ROOT), help="checkout whose server runs")
    p.add_argument("--samples", type=int, default=10_000_000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--format", choices=("npy", "json", "grpc", "grpc-int"), default="npy",
                   help="the predict body (grpc: OIP ModelInfer with typed contents)")
    p.add_argument("--workers", type=int, default=0, help="front-end processes (0: one process)")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="extra server environment (settings)")
    a = p.parse_args()
    x = (np.random.default_rng(0).standard_normal(a.samples) * 0.1).astype("<f4")
    if a.format == "json":
        body = ('{"inputs": [[' + ",".join(f"{v:.6f}" for v in x) + "]]}").encode()
        ctype = "application/json"
    elif a.format.startswith("grpc"):
        from server.proto import grpc_service_pb2 as pb

        req = pb.ModelInferRequest(model_name="kws-s4d")
        if a.format == "grpc":
            t = req.inputs.add(name="input", datatype="FP32", shape=[1, a.samples, 1])
            t.contents.fp32_contents.extend(x.tolist())
        else:
            t = req.inputs.add(name="input", datatype="INT16", shape=[1, a.samples, 1])
            t.contents.int_contents.extend(np.round(x * 32767).astype(np.int32).tolist())
        body, ctype = req.SerializeToString(), "application/grpc"
    else:
        buf = io.BytesIO()
        np.save(buf, x)
        body, ctype = buf.getvalue(), "application/x-npy"
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": a.tree, "S4D_PORT": str(port), "S4D_MODELS": "kws-s4d",
           "S4D_LOG_LEVEL": "warning", "S4D_MAX_SEQUENCE_SAMPLES": str(a.samples),
           "S4D_MAX_BODY_BYTES": str(len(body) + (1 << 20)), "S4D_WORKERS": str(a.workers),
           "S4D_MAX_PENDING_SAMPLES": str(2 * a.samples), "S4D_BODY_TIMEOUT_S": "600",
           "S4D_CHECKPOINTS": str(ROOT / "checkpoints"), "S4D_GRPC_PORT": str(grpc_port),
           **dict(kv.split("=", 1) for kv in a.env)}
    proc = subprocess.Popen([sys.executable, "-m", "s4d_cli", "serve"], cwd=a.tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        marks: dict = {}

        def post():
            time.sleep(2.0)
            marks["m0"] = scrape_metrics(base)
            marks["t0"] = time.monotonic()
            if ctype == "application/grpc":
                marks["status"] = grpc_infer(grpc_port, body, len(body))
            else:
                r = httpx.post(f"{base}/v1/models/kws-s4d/predict", content=body,
                               headers={"content-type": ctype}, timeout=900)
                marks["status"] = r.status_code
            marks["t1"] = time.monotonic()
            marks["m1"] = scrape_metrics(base)

        th = threading.Thread(target=post)
        th.start()
        lat = asyncio.run(stream(base.replace("http", "ws") + "/v1/models/kws-s4d/stream",
                                 a.seconds, marks))
        th.join()
        marks.setdefault("t1", time.monotonic())
        during = np.array([d for t, d in lat if marks["t0"] <= t <= marks["t1"]]) * 1e3
        res = {"tree": a.tree, "samples": a.samples, "format": a.format, "workers": a.workers,
               "env": a.env, "body_bytes": len(body), "predict_status": marks["status"],
               "predict_s": round(marks["t1"] - marks["t0"], 2),
               "frames_during_predict": int(during.size),
               "stream_closed_by_server": marks.get("closed"),
               "stream_ms_during_predict": {
                   "p50": round(float(np.percentile(during, 50)), 1) if during.size else None,
                   "p99": round(float(np.percentile(during, 99)), 1) if during.size else None,
                   "max": round(float(during.max()), 1) if during.size else None}}
        # the server's own event-loop stalls over the predict, by process role
        res["server_loop_lag"] = loop_stalls(marks.get("m0", {}), marks.get("m1", {}))
        print(json.dumps(res) if a.json else res)
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
