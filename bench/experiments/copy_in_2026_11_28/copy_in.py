"""Time of one `SlotBuffers.copy_in` (a front-end's tick copied from its staging ring into the
engine's ring) for a kws-sized ring (2,560 samples, frame 320, 2,048 slots), at frame-aligned
offsets as real-time streams write them.

    PYTHONPATH=. python bench/experiments/copy_in_2026_11_28/copy_in.py
"""

import time

import numpy as np

from server.engine.buffers import SlotBuffers


def main() -> None:
    cap, ring, frame = 2048, 2560, 320
    rng = np.random.default_rng(0)
    for n, c in [(27, 320), (134, 320), (512, 64), (27, 100)]:
        b = SlotBuffers(cap, ring, 1, 12, frame=frame)
        src = rng.standard_normal(b.data.shape).astype(np.float32)
        slots = rng.choice(cap, n, replace=False).astype(np.int64)
        counts = np.full(n, c, np.int64)
        b.received[slots] = rng.integers(0, 10**4, n) * c
        reps, best = 500, float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(reps):
                b.copy_in(src, slots, counts)
            best = min(best, (time.perf_counter() - t) / reps)
        print(f"{n} sessions x {c} samples: {best * 1e6:.1f} us per call "
              f"({best * 1e6 / n:.2f} us per session)")


if __name__ == "__main__":
    main()
