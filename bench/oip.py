"""Per-request latency over each protocol, against a real server process.

    python -m bench.oip [--model kws-s4d] [--checkpoints DIR] [--requests 30] [--length 16000]
                        [--chunks 200] [--chunk 320]

Batch: one clip per request, sequential (one in flight), so the numbers are protocol + model
latency, not throughput: /v1 predict (JSON), OIP v2 HTTP with JSON and with binary tensors
(tritonclient.http), and OIP v2 gRPC unary and stream (tritonclient.grpc).

Streaming (`--chunks N`, 0 skips it): one stream of N chunks of `--chunk` samples (default one
frame), each sent when the answer to the previous one has arrived: the round trip per chunk
over the WebSocket (its `result` at that offset) and as an OIP sequence (sequence_id, start,
end) over gRPC ModelStreamInfer, gRPC unary and HTTP binary. The difference to the
WebSocket is the per-chunk overhead of speaking OIP.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np

from bench.serve import free_port


def _timed(fn, n: int) -> dict:
    fn()  # warm the path
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (n - 1))]}


def run(args: argparse.Namespace) -> int:
    import tritonclient.grpc as tg
    import tritonclient.http as th

    port, gport = free_port(), free_port()
    cmd = [sys.executable, "-m", "server", "--port", str(port), "--grpc-port", str(gport),
           "--models", args.model, "--log-level", "warning"]
    if args.checkpoints:
        cmd += ["--checkpoints", args.checkpoints]
    proc = subprocess.Popen(cmd, start_new_session=True)
    # a SIGTERM (e.g. from `timeout`) must still stop the server below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        x = np.random.default_rng(0).standard_normal((1, args.length, 1)).astype(np.float32)
        x *= 0.1
        http = th.InferenceServerClient(f"127.0.0.1:{port}")
        grpc_c = tg.InferenceServerClient(f"127.0.0.1:{gport}")
        hc = httpx.Client(base_url=base, timeout=60)

        def v1():
            hc.post(f"/v1/models/{args.model}/predict",
                    json={"inputs": [x[0, :, 0].tolist()]}).raise_for_status()

        def v2(binary: bool):
            inp = th.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [th.InferRequestedOutput(n, binary_data=binary)
                    for n in ("probabilities", "label")]
            http.infer(args.model, [inp], outputs=outs)

        def grpc_unary():
            inp = tg.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            grpc_c.infer(args.model, [inp])

        results: queue.Queue = queue.Queue()
        grpc_c.start_stream(callback=lambda result, error: results.put((result, error)))

        def grpc_stream():
            inp = tg.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            grpc_c.async_stream_infer(args.model, [inp])
            _, err = results.get(timeout=60)
            if err is not None:
                raise err

        paths = {
            "/v1 predict (JSON)": v1,
            "OIP HTTP, JSON tensors": lambda: v2(False),
            "OIP HTTP, binary tensors": lambda: v2(True),
            "OIP gRPC unary": grpc_unary,
            "OIP gRPC stream": grpc_stream,
        }
        rows = {}
        for name, fn in paths.items() if args.requests > 0 else ():  # 0: streaming only
            rows[name] = _timed(fn, args.requests)
            print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
        grpc_c.stop_stream()
        print(f"model {args.model}, {os.cpu_count()} CPUs")
        if rows:
            print(f"one clip of {args.length} samples, {args.requests} "
                  "sequential requests")
            print("| path | median ms | p90 ms |\n| --- | --- | --- |")
        for name, r in rows.items():
            print(f"| {name} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |")
        if args.chunks > 0:
            stream_rows = streaming(args, port, http, grpc_c)
            print(f"\nstreaming: {args.chunks} chunks of {args.chunk} samples, one in flight")
            print("| path | median ms/chunk | p90 ms/chunk | median overhead vs WS ms |\n"
                  "| --- | --- | --- | --- |")
            ws_med = stream_rows["WebSocket stream"]["median_ms"]
            for name, r in stream_rows.items():
                print(f"| {name} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                      f"{r['median_ms'] - ws_med:+.2f} |")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return 0


def _summary(times: list[float]) -> dict:
    times = sorted(t * 1000 for t in times[1:])  # the first chunk opens the stream: left out
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}


def streaming(args: argparse.Namespace, port: int, http, grpc_c) -> dict:
    """Round trip per chunk of one stream: WebSocket vs OIP sequences."""
    import json

    import tritonclient.grpc as tg
    import tritonclient.http as th
    from websockets.sync.client import connect

    n, c = args.chunks, args.chunk
    x = (np.random.default_rng(1).standard_normal((n * c, 1)) * 0.1).astype(np.float32)
    rows: dict[str, dict] = {}

    with connect(f"ws://127.0.0.1:{port}/v1/models/{args.model}/stream", max_size=None) as ws:
        meta = httpx.get(f"http://127.0.0.1:{port}/v1/models/{args.model}").json()
        ws.send(json.dumps({"type": "start", "sample_rate": meta["sample_rate"], "channels": 1,
                            "encoding": "f32le", "emit_every": c}))
        json.loads(ws.recv())
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            ws.send(x[i * c:(i + 1) * c].tobytes())
            while True:
                m = json.loads(ws.recv())
                if m["type"] == "result" and m["offset"] >= (i + 1) * c:
                    break
            times.append(time.perf_counter() - t0)
        ws.send(json.dumps({"type": "end"}))
    rows["WebSocket stream"] = _summary(times)

    def sequence(send, name: str, seq_id: str) -> None:
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            send(x[i * c:(i + 1) * c][None], seq_id, i == 0, i == n - 1)
            times.append(time.perf_counter() - t0)
        rows[name] = _summary(times)

    results: queue.Queue = queue.Queue()
    grpc_c.start_stream(callback=lambda result, error: results.put((result, error)))

    def grpc_stream(chunk, sid, start, end):
        inp = tg.InferInput("input", list(chunk.shape), "FP32")
        inp.set_data_from_numpy(chunk)
        grpc_c.async_stream_infer(args.model, [inp], sequence_id=sid, sequence_start=start,
                                  sequence_end=end)
        _, err = results.get(timeout=60)
        if err is not None:
            raise err

    def grpc_unary(chunk, sid, start, end):
        inp = tg.InferInput("input", list(chunk.shape), "FP32")
        inp.set_data_from_numpy(chunk)
        grpc_c.infer(args.model, [inp], sequence_id=sid, sequence_start=start, sequence_end=end)

    def http_binary(chunk, sid, start, end):
        inp = th.InferInput("input", list(chunk.shape), "FP32")
        inp.set_data_from_numpy(chunk, binary_data=True)
        http.infer(args.model, [inp], sequence_id=sid, sequence_start=start, sequence_end=end,
                   outputs=[th.InferRequestedOutput("probabilities", binary_data=True)])

    sequence(grpc_stream, "OIP sequence, gRPC stream", "bench-gs")
    grpc_c.stop_stream()
    sequence(grpc_unary, "OIP sequence, gRPC unary", "bench-gu")
    sequence(http_binary, "OIP sequence, HTTP binary", "bench-hb")
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="kws-s4d")
    p.add_argument("--checkpoints", default=None, help="checkpoints folder (default: the repo's)")
    p.add_argument("--requests", type=int, default=30, help="batch requests (0: skip)")
    p.add_argument("--length", type=int, default=16000)
    p.add_argument("--chunks", type=int, default=200, help="streaming chunks (0: skip)")
    p.add_argument("--chunk", type=int, default=320, help="samples per streaming chunk")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
