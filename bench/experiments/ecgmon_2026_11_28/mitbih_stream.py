"""A monitor on the one real recording here: MIT-BIH 208's 5 min excerpt streamed whole (250 Hz,
mV). Prints its events (the model's own detector) and, every 10 s, its label beside the R-peak
detector's rate for that window (a sanity check, no labels: 208 is full of PVCs).

    python bench/experiments/ecgmon_2026_11_28/mitbih_stream.py CHECKPOINT ...
"""

import sys

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.data.mitbih import windows
from model.events import DetectorSettings, detect, frame_ends


def main(checkpoints):
    w, hr = windows()
    x = torch.from_numpy(w.reshape(-1)).view(1, -1, 1)
    for ck in checkpoints:
        net, cfg = load_checkpoint(ck)
        net.eval()
        names = cfg.class_names()
        ends = frame_ends(x.shape[1], cfg.task.frame_size, cfg.model.patch_size)
        with torch.no_grad():
            lg = net.prefix_logits(x)[0, [e // cfg.model.patch_size - 1 for e in ends]]
        probs = torch.softmax(lg.double(), -1).numpy()
        st = DetectorSettings.from_config(cfg.task.events, names, cfg.task.sample_rate)
        ev = detect(names, st, ends, probs)
        print(ck, "events:", [(e["label"], round(e["offset"] / 250, 1)) for e in ev])
        calls = [names[int(np.argmax(probs[ends.index(10 * 250 * (i + 1))]))]
                 for i in range(len(hr))]
        band = ["brady" if h < 60 else "tachy" if h > 100 else "normal_or_other" for h in hr]
        agree = sum((c if c in ("brady", "tachy") else "normal_or_other") == b
                    for c, b in zip(calls, band, strict=True))
        print(" per 10 s (model at the window's end | detector bpm):",
              " ".join(f"{c}|{h:.0f}" for c, h in zip(calls, hr, strict=True)))
        print(f" band agreement at window ends: {agree} of {len(hr)}")


if __name__ == "__main__":
    main(sys.argv[1:])
