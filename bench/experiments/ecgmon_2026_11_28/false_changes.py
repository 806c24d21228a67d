"""Where does a monitor's false rhythm changes come from? Per false event: the true rhythm of
the segment it falls in and the label it reports (validation streams of a bank; CPU).

    python bench/experiments/ecgmon_2026_11_28/false_changes.py CHECKPOINT BANK [THRESHOLD ...]
"""

import collections
import sys
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint
from model.stream_eval import evaluate, watched_labels
from model.stream_metrics import detect_many, settings_for
from model.train_streams import PRESETS


def main(ck: str, bank: str, thresholds: list[float]) -> None:
    preset = PRESETS["ecg-monitor"]
    net, cfg = load_checkpoint(ck)
    net.eval()
    ev = cfg.task.events
    names = cfg.class_names()
    with torch.no_grad():
        data = evaluate(net, cfg, preset, Path(bank), "val", torch.device("cpu"))
    print("frame accuracy", data["frame_accuracy"])
    for thr in thresholds or [ev.threshold]:
        st = settings_for(thr, ev.hysteresis, ev.holdoff_ms, watched_labels(cfg),
                          cfg.task.sample_rate, 0.0, 0.0, None, changes_only=True)
        events = detect_many([(p, e) for p, e, _ in data["pos"]], st, names)
        kinds = collections.Counter()
        for evs, (_, _, segs) in zip(events, data["pos"], strict=True):
            for e in evs:
                seg = next(s for s in segs if s.start <= e["offset"] < s.end)
                truth = names[seg.label]
                first = next((x for x in evs if x["label"] == truth
                              and seg.start <= x["offset"] < seg.end), None)
                if e is first:
                    continue
                kinds[(truth, e["label"], "in first 15 s" if e["offset"] - seg.start
                       < 15 * cfg.task.sample_rate else "later")] += 1
        print(f"threshold {thr}: {sum(kinds.values())} false events")
        for k, n in kinds.most_common():
            print("  ", k, n)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [float(t) for t in sys.argv[3:]])
