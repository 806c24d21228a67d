"""ONNX Runtime's batch graph on the CPU: a sequence as is against the same sequence
zero-padded to a power-of-two number of steps (what OnnxBackend.predict now does). Same
process, same graph, median of 3; the first three logits of each show the answers agree.

    PYTHONPATH=. python bench/experiments/batch_fft_2026_11_28/onnx_pad.py
"""

import statistics
import time

import numpy as np

from server.backends.onnx_backend import OnnxBackend


def timed(fn, reps=3):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3, out


for model in ("kws-s4d", "ecg-s4d"):
    be = OnnxBackend.load(f"checkpoints/{model}", "cpu")
    c, p = be.metadata.input_channels, be.metadata.patch_size
    for n in (16000, 64000):
        x = (0.1 * np.random.default_rng(0).standard_normal((1, n, c))).astype(np.float32)
        lengths = np.array([n])
        feeds = {"x": x, "lengths": lengths}
        as_is, out_a = timed(lambda be=be, feeds=feeds: be.batch_session.run(None, feeds)[0])
        padded, out_p = timed(lambda be=be, x=x, n=lengths: be.predict(x, n))
        print(f"{model} {n} samples ({n // p} steps): as is {as_is:.1f} ms, padded "
              f"{padded:.1f} ms; logits {out_a[0][:3]} / {out_p[0][:3]}", flush=True)
