"""Where a keyword-event model misses: its test streams scored at its own event defaults, by
background and SNR band (`stream_eval.by_condition`). CPU, about 10 minutes per model here.

    python conditions.py CHECKPOINT OUT.json [--bank .cache/stream15] [--cache TEST.npy]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.checkpoint import load_checkpoint  # noqa: E402
from model.stream_eval import by_condition, evaluate  # noqa: E402
from model.train import hardware  # noqa: E402
from model.train_streams import PRESETS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--bank", type=Path, default=ROOT / ".cache" / "stream15")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, help="keep / reuse the test streams' probabilities")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net, cfg = load_checkpoint(args.checkpoint)
    net.eval()
    ev = cfg.task.events
    names = cfg.class_names()
    label_on = {names.index(k): v for k, v in (ev.label_thresholds or {}).items()}
    preset = PRESETS["kws-events"]
    if args.cache and args.cache.exists():  # frame probabilities of an earlier run
        test = np.load(args.cache, allow_pickle=True)[0]
    else:
        test = evaluate(net, cfg, preset, args.bank, "test", torch.device("cpu"))
        if args.cache:
            np.save(args.cache, np.array([test], dtype=object), allow_pickle=True)
    m = by_condition(preset, cfg, test, ev.threshold, ev.min_on_ms, ev.onset_lag_ms, label_on)
    m["evaluated_on"] = hardware(torch.device("cpu"))
    m["command"] = "python bench/experiments/kws_events_2026_11_27/conditions.py " + " ".join(
        sys.argv[1:])
    args.out.write_text(json.dumps(m, indent=1) + "\n")
    print(json.dumps(m, indent=1))


if __name__ == "__main__":
    main()
