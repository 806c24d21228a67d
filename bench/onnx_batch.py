"""ONNX Runtime's batch graph (`batch.onnx`, REST predict on the onnxruntime backend): time per
batch of whole clips, and its distance from a float64 PyTorch forward of the same inputs.

    python -m bench.onnx_batch [--checkpoints kws-s4d ecg-s4d ecg-monitor-s4d] [--batch 16]

Exports into a fresh cache folder each run (so the graph is the current code's). Prints one JSON
line per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def measure(name: str, batch: int, reps: int) -> dict:
    from model.checkpoint import load_checkpoint
    from server.backends.base import get_backend

    path = ROOT / "checkpoints" / name
    ob = get_backend("onnxruntime").load(path, "cpu")
    meta = ob.metadata
    seconds = 1.0 if meta.sample_rate >= 8000 else 10.0
    length = int(seconds * meta.sample_rate) // meta.patch_size * meta.patch_size
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((batch, length, meta.input_channels)) * 0.5).astype(np.float32)
    lengths = np.full(batch, length, np.int64)
    got = ob.predict(x, lengths)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        ob.predict(x, lengths)
        times.append(time.perf_counter() - t)
    net, _ = load_checkpoint(path)
    net = net.double().eval()
    with torch.no_grad():
        ref = net(torch.from_numpy(x.astype(np.float64))).numpy()
    return {"checkpoint": name, "batch": batch, "clip_seconds": seconds,
            "predict_ms_median": round(1000 * float(np.median(times)), 1),
            "rel_vs_float64": rel(got, ref), "reps": reps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="+", default=["kws-s4d", "ecg-s4d", "ecg-monitor-s4d"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    os.environ["S4D_ONNX_CACHE"] = tempfile.mkdtemp(prefix="s4d-onnx-bench-")
    torch.set_num_threads(1)
    for name in args.checkpoints:
        print(json.dumps(measure(name, args.batch, args.reps)), flush=True)


if __name__ == "__main__":
    main()
