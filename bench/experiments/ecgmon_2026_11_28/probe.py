"""Does the shipped ecg-monitor-s4d (trained on neurokit2 ECGSYN streams, v1 windows) hold up on
streams of other generators? Builds stream banks from the template generator (t5, ecg-s4d's)
and from the shifted generator (ECGSYN + neurokit2 noise, wide QRS at every rate), scores the
shipped detector on their test streams (12 x 30 min, the preset's sizes and seeds).

    python bench/experiments/ecgmon_2026_11_28/probe.py [CHECKPOINT ...]
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.data import ecg
from model.stream_eval import evaluate, score
from model.train_streams import PRESETS

OUT = Path(".cache/ecgmon_probe")
N = {"val": 150, "test": 300}


def bank(name: str) -> Path:
    d = OUT / name
    if (d / "ecg.npz").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in N.items():
        if name == "t5":
            x, y = ecg.generate_template(split, n, seed=1, workers=2)
        elif name == "shift":
            x, y = ecg.generate_shift(n, seed=1 + (split == "val"), workers=2)
        else:
            x, y = ecg.generate(split, n, seed=1, workers=2)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x.astype(np.float16), y
    np.savez_compressed(d / "ecg.npz", **arrays)
    return d


def main(argv):
    preset = PRESETS["ecg-monitor"]
    results = {}
    for ck in argv or ["checkpoints/ecg-monitor-s4d"]:
        net, cfg = load_checkpoint(ck)
        net.eval()
        thr = cfg.task.events.threshold
        for name in ("v1", "t5", "shift"):
            t = time.time()
            d = bank(name)
            with torch.no_grad():
                data = evaluate(net, cfg, preset, d, "test", torch.device("cpu"))
            s = score(preset, cfg, data, thr)
            keep = {k: v for k, v in s.items() if not isinstance(v, (list, dict))}
            keep["frame_accuracy"] = data["frame_accuracy"]
            results[f"{ck}:{name}"] = keep
            print(ck, name, f"{time.time() - t:.0f} s", json.dumps(keep), flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
