"""GPU correctness of the graphed streaming step (run on a CUDA machine; exits 1 on failure).

For each shipped checkpoint: random states and frames through the graphed step, bucket after
bucket (graphs share one memory pool), against the eager step; the served whole-step graph
(gather, step, scatter on the slab) against the eager step, other rows untouched; then whole
streams through the graphed step against the batch (FFT) forward, for a chunking with partial
frames.
`python -m bench.gpu_check`
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from server.backends.torch_backend import TorchBackend

ROOT = Path(__file__).resolve().parent.parent


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def main() -> int:
    ok = True
    rng = np.random.default_rng(0)
    for ckpt in sorted((ROOT / "checkpoints").iterdir()):
        if not (ckpt / "config.json").exists():
            continue
        be = TorchBackend.load(ckpt, "cuda")
        m = be.metadata
        t, c = m.frame_size, m.input_channels
        worst = 0.0
        with torch.inference_mode():
            for b in (1, 4, 16, 48, 256, 16, 1):  # revisit buckets: pool sharing must hold
                frames = rng.standard_normal((b, t, c)).astype(np.float32)
                state = {k: torch.randn_like(v) * 0.1 for k, v in be.streaming.zero_state(b).items()}
                g_logits, g_state = be.step(frames, state)
                g_state = {k: v.clone() for k, v in g_state.items()}
                e_logits, e_state = be.streaming.step(torch.from_numpy(frames).cuda(), state)
                worst = max(worst, rel(g_logits, e_logits.cpu()),
                            *(rel(g_state[k].cpu(), e_state[k].cpu()) for k in e_state))
        # the served path: gather, step and scatter in one graph (SlabGraphedStep) against
        # the eager gather / step / scatter on a copy of the slab; rows not stepped untouched
        slab = be.new_slab(64)
        with torch.inference_mode():
            for v in slab.tensors.values():
                v.copy_(torch.randn_like(v) * 0.1)
            for b, slots in ((16, [5, 0, 2]), (48, list(range(40, 20, -1))), (16, [63, 1])):
                before = {k: v.clone() for k, v in slab.tensors.items()}
                frames = rng.standard_normal((b, t, c)).astype(np.float32)
                g_logits = be.step_slots(slab, slots, frames)
                e_logits, e_state = be.streaming.step(
                    torch.from_numpy(frames[: len(slots)]).cuda(),
                    {k: v[slots] for k, v in before.items()})
                worst = max(worst, rel(g_logits, e_logits.cpu()))
                others = [r for r in range(64) if r not in slots]
                for k, v in slab.tensors.items():
                    worst = max(worst, rel(v[slots].cpu(), e_state[k].cpu()))
                    if not torch.equal(v[others], before[k][others]):
                        worst = float("inf")  # padding rows wrote into a session's state
        # whole streams (3 sessions padded to 4, 2.5 frames each) vs the batch forward
        n = int(2.5 * t) - int(2.5 * t) % m.patch_size
        x = rng.standard_normal((3, n, c)).astype(np.float32) * 0.3
        slab = be.new_slab(8)
        slots = [5, 0, 2]
        slab.zero(slots)
        with torch.inference_mode():
            at = 0
            while at < n:
                length = min(t, n - at)
                frames = np.zeros((4, length, c), np.float32)
                frames[:3] = x[:, at:at + length]
                logits, new = be.step(frames, slab.gather(slots, pad_to=4))
                slab.scatter(slots, new)
                at += length
        stream = torch.softmax(torch.from_numpy(np.asarray(logits)[:3]).double(), -1).numpy()
        batch = be.predict(x, np.full(3, n, np.int64))
        batch = torch.softmax(torch.from_numpy(batch).double(), -1).numpy()
        if stream.ndim == 3:
            stream = stream[:, -1]
        if batch.ndim == 3:
            batch = batch[:, (n // m.patch_size) - 1]
        sb = float(np.abs(stream - batch).max())
        good = worst <= 1e-5 and sb <= 1e-5
        ok &= good
        print(f"{m.name}: graphs {sorted(be.graphs.graphs)} slab graphs {sorted(be.graphs.slab_graphs)} max rel graph vs eager {worst:.2e}; "
              f"stream vs batch max |dp| {sb:.2e} {'OK' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
