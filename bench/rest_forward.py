"""Milliseconds per REST forward (`TorchBackend.predict`, one sequence), median of --reps,
for the shipped models at a few lengths: what the kernels kept from load save on a CPU.

    python -m bench.rest_forward --label now [--device cpu] [--threads 2]

Run it from another checkout (PYTHONPATH=that checkout) for a before / after pair.
"""

from __future__ import annotations

import argparse
import json

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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for model in args.models:
        backend = TorchBackend.load(f"checkpoints/{model}", args.device)
        channels = backend.metadata.input_channels
        for n in args.lengths:
            rng = np.random.default_rng(0)
            x = (0.1 * rng.standard_normal((1, n, channels))).astype(np.float32)
            lengths = np.array([n])
            seconds = timeit(lambda b=backend, x=x, lens=lengths: b.predict(x, lens), backend.device,
                             min_time=0, min_reps=args.reps, max_reps=args.reps)
            print(json.dumps({"label": args.label, "model": model, "samples": n,
                              "ms": round(seconds * 1e3, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
