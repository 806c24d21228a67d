"""Milliseconds per REST forward (`TorchBackend.predict`), median of --reps, for the shipped
models at a few lengths and batch sizes: what the kernels kept from load save on a CPU, what
`--compile-batch` saves on a GPU.

    python -m bench.rest_forward --label now [--device cpu] [--threads 2] [--batches 1 64]
    python -m bench.rest_forward --device cuda --compile-batch   # the backend as `s4d serve
                                                                 # --compile-batch` loads it

Run it from another checkout (PYTHONPATH=that checkout) for a before / after pair.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from bench.core import timeit
from server.backends.torch_backend import TorchBackend

MODELS = ("kws-s4d", "ecg-s4d", "fsdd-s4d")
LENGTHS = (16000, 16001, 64000)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", default="now")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--compile-batch", action="store_true",
                    help="load the backend as `s4d serve --compile-batch` does")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["S4D_COMPILE_BATCH"] = str(args.compile_batch).lower()
    os.environ["S4D_PRECISION"] = args.precision
    for model in args.models:
        t0 = time.perf_counter()
        backend = TorchBackend.load(f"checkpoints/{model}", args.device)
        load_s = time.perf_counter() - t0
        channels = backend.metadata.input_channels
        for n in args.lengths:
            for batch in args.batches:
                rng = np.random.default_rng(0)
                x = (0.1 * rng.standard_normal((batch, n, channels))).astype(np.float32)
                lengths = np.full(batch, n)
                seconds = timeit(lambda b=backend, x=x, lens=lengths: b.predict(x, lens),
                                 backend.device, min_time=0, min_reps=args.reps,
                                 max_reps=args.reps)
                print(json.dumps({"label": args.label, "model": model, "samples": n,
                                  "batch": batch, "ms": round(seconds * 1e3, 2),
                                  "precision": args.precision,
                                  "compiled_batch": backend.metadata.extra["compiled_batch"],
                                  "load_s": round(load_s, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
