"""Would a second-stage verifier cut keyword false alarms? An offline measurement.

Each event of a keyword event model (kws-events-s4d) is re-checked by a clip model (kws-s4d)
on the 1 s of audio that ends `delay` seconds after the event's onset; the event is kept when
the clip model's top class is the event's label with probability >= `min_p`. The streams are
the event model's own evaluation streams (`model.stream_eval.evaluate`'s recipe and seeds,
drawn on this device), and the metrics are model/stream_metrics.py's.

    python -m bench.kws_verifier --split val --out /tmp/v_val.json
    python -m bench.kws_verifier --split test --out /tmp/v_test.json   # CPU: ~6 min

Writes one row per (threshold, delay, min_p) and per threshold without the verifier
(delay null): false rejection rate, false alarms per hour, onset p90. Choose the setting on
`val`; read it on `test`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.stream_eval import eval_batches
from model.stream_metrics import detect_many, kws_summary, settings_for
from model.train_streams import PRESETS, smoke

THRESHOLDS = (0.9, 0.96, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9998)
DELAYS_S = (0.0, 0.15, 0.3)
MIN_P = (0.0, 0.3, 0.5, 0.7, 0.9)


def windows(x: torch.Tensor, offsets: list[int], delays: list[int], size: int) -> torch.Tensor:
    """[len(offsets) * len(delays), size, 1]: the `size` samples before offset + delay
    (clipped to the stream; left-padded with zeros near its start)."""
    out = torch.zeros(len(offsets) * len(delays), size)
    k = 0
    for o in offsets:
        for d in delays:
            end = min(o + d, x.shape[0])
            seg = x[max(0, end - size):end]
            out[k, size - len(seg):] = seg
            k += 1
    return out.unsqueeze(-1)


def collect(split: str, events_ckpt: Path, verifier_ckpt: Path, bank_dir: Path,
            preset=PRESETS["kws-events"]) -> dict:
    """Per stream: events at every threshold, the verifier's probabilities per (onset, delay),
    and the truth."""
    net, cfg = load_checkpoint(events_ckpt)
    ver, vcfg = load_checkpoint(verifier_ckpt)
    ver.eval()
    names = cfg.class_names()
    if vcfg.class_names() != names:
        raise SystemExit("the verifier must have the event model's classes")
    rate = cfg.task.sample_rate
    size = int(round(vcfg.task.sample_rate * 1.0))
    watched = [i for i, c in enumerate(names) if c not in ("unknown", "silence")]
    settings = {t: settings_for(t, preset.hysteresis, preset.holdoff_ms, watched, rate)
                for t in THRESHOLDS}
    delays = [int(round(d * rate)) for d in DELAYS_S]
    data = {"pos": [], "neg": [], "pos_seconds": 0.0, "neg_seconds": 0.0, "names": names,
            "rate": rate}
    batches = eval_batches(net, cfg, preset, bank_dir, split, torch.device("cpu"))
    for kind, x, _, truth, probs, ends, _ in batches:
        for i in range(x.shape[0]):
            evs = {t: detect_many([(probs[i], np.array(ends))], st, names)[0]
                   for t, st in settings.items()}
            onsets = sorted({e["offset"] for es in evs.values() for e in es})
            checks = {}
            if onsets:
                with torch.no_grad():
                    pv = torch.softmax(ver(windows(x[i, :, 0], onsets, delays, size)).double(),
                                       -1).numpy()
                keys = [(o, d) for o in onsets for d in DELAYS_S]  # windows' order
                checks = dict(zip(keys, pv, strict=True))
            data[kind].append((evs, checks, truth[i]))
        data[f"{kind}_seconds"] += x.shape[0] * x.shape[1] / rate
    return data


def kept(evs: dict, checks: dict, names: list[str], t: float, d, p) -> list[dict]:
    """The events at threshold t that the verifier confirms (all of them when d is None)."""
    if d is None:
        return evs[t]
    return [e for e in evs[t] if checks[(e["offset"], d)].argmax() == names.index(e["label"])
            and checks[(e["offset"], d)].max() >= p]


def sweep(data: dict) -> list[dict]:
    names, rate = data["names"], data["rate"]
    rows = []
    settings = [(t, None, None) for t in THRESHOLDS]
    settings += [(t, d, p) for t in THRESHOLDS for d in DELAYS_S for p in MIN_P]
    for t, d, p in settings:
        pos = [(kept(e, c, names, t, d, p), truth) for e, c, truth in data["pos"]]
        neg = [kept(e, c, names, t, d, p) for e, c, _ in data["neg"]]
        m = kws_summary(pos, neg, data["neg_seconds"], data["pos_seconds"], names, rate)
        rows.append(dict(threshold=t, delay_s=d, min_p=p, frr=m["false_rejection_rate"],
                         fa_per_hour=m["false_alarms_per_hour"],
                         onset_p90_ms=m["onset_error_p90_ms"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("val", "test"), required=True)
    ap.add_argument("--events", type=Path, default=Path("checkpoints/kws-events-s4d"))
    ap.add_argument("--verifier", type=Path, default=Path("checkpoints/kws-s4d"))
    ap.add_argument("--bank", type=Path, default=Path(".cache/stream15"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a few short streams (a dry run)")
    args = ap.parse_args()
    preset = smoke(PRESETS["kws-events"]) if args.smoke else PRESETS["kws-events"]
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rows = sweep(collect(args.split, args.events, args.verifier, args.bank, preset))
    args.out.write_text(json.dumps({"split": args.split, "events": str(args.events),
                                    "verifier": str(args.verifier), "rows": rows,
                                    "wall_s": round(time.time() - t0, 1)}, indent=1) + "\n")
    best = min((r for r in rows if r["fa_per_hour"] <= 1.0), key=lambda r: r["frr"], default=None)
    print(f"{args.split}: {len(rows)} settings in {time.time() - t0:.0f} s; "
          f"lowest FRR at <= 1 FA/h: {best}")


if __name__ == "__main__":
    main()
