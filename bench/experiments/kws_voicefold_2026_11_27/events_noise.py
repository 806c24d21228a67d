"""Keyword events on loud stationary noise (does kws-events-s4d share kws-s4d's loud-noise
false keywords?): two minutes each of white and pink noise at -40..-20 dBFS RMS through the
batch path (per-frame probabilities, then the checkpoint's own detector).

    python events_noise.py [CHECKPOINT]      # default checkpoints/kws-events-s4d
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from model.data import kws_mix  # noqa: E402
from model.events import DetectorSettings, detect  # noqa: E402


def noise(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Unit-RMS white or pink noise (the keyword clips' pink, `kws_mix._pink`)."""
    x = rng.standard_normal(n) if kind == "white" else kws_mix._pink(rng, n)
    return x / np.sqrt(np.mean(x**2))


def main() -> None:
    import torch

    from model.checkpoint import load_checkpoint
    from model.stream_eval import frame_probs

    torch.set_num_threads(2)
    net, cfg = load_checkpoint(sys.argv[1] if len(sys.argv) > 1
                               else ROOT / "checkpoints" / "kws-events-s4d")
    net.eval()
    names = cfg.class_names()
    settings = DetectorSettings.from_config(cfg.task.events, names, cfg.task.sample_rate)
    rng = np.random.default_rng(0)
    seconds = 120
    for kind in ("white", "pink"):
        for db in (-40, -30, -25, -20):
            x = noise(rng, kind, seconds * cfg.task.sample_rate) * 10 ** (db / 20)
            xt = torch.from_numpy(np.clip(x, -1, 1).astype(np.float32)).view(1, -1, 1)
            with torch.no_grad():
                probs, ends = frame_probs(net, xt, cfg.task.frame_size)
            events = detect(names, settings, ends, probs[0])
            print(f"{kind} {db} dBFS: {len(events)} events in {seconds} s",
                  [e["label"] for e in events][:6], flush=True)


if __name__ == "__main__":
    main()
