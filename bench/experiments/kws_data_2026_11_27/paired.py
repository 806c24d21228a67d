"""Paired comparison of keyword checkpoints on the validation and test clips that prep-kws makes
(same codes, seeds and counts, so the accuracies equal the runs' own to the digit), with a
bootstrap over source units: clips made from one utterance (or one voice) are not independent.

    BANK=.cache/data13 N_VAL=400 UNIT=utterance python paired.py R=runs/r X=runs/x [U=...]

VALIDATE_ON="flite:slt ..." makes those training voices validate, as `prep-kws --validate-on`
(a voice fold); THREADS sets torch's threads (default 2). A bank with validation phrases
(`build_data13_bank.py kws --val-phrases K`) also gets how often they fire a keyword (lower is
better), with the same paired bootstrap.

The first checkpoint is the reference; differences are the others minus it, in points. UNIT is
"utterance" or "voice" (every noise-only clip is a unit of its own). OUT_JSON (default
.cache/diag16/paired.json) gets the numbers.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from model.data import kws_mix  # noqa: E402
from model.data.kws_bank import ENGINES, load_bank, validate_on  # noqa: E402


def clips(rows: list[dict], split: str, s_i: int, n: int, unit: str, phrases: bool = False):
    """prep-kws's clips of one split for every engine (its keyword and unknown clips, or its
    phrases), with each clip's unit (its source utterance or voice; a noise-only clip is a unit
    of its own)."""
    xs, ys, units = [], [], []
    for e_i, e in enumerate(ENGINES):
        kinds = ("phrase",) if phrases else ("keyword", "unknown")
        pool = kws_mix.select(rows, engines=(e,), splits=(split,), kinds=kinds)
        if not pool:
            continue
        x, y, src = kws_mix.make_clips(pool, n, seed=0, code=100 + 10 * e_i + s_i,
                                       kind="phrases" if phrases else "words",
                                       workers=int(os.environ.get("WORKERS", "2")),
                                       sources=True)
        xs.append(x)
        ys.append(y)
        units += [f"{e}:silence:{k}" if i < 0 else
                  f"{e}:{pool[i]['voice']}" if unit == "voice" else f"{e}:{i}"
                  for k, i in enumerate(src)]
    return np.concatenate(xs), np.concatenate(ys), np.array(units)


def predict(net, x: np.ndarray) -> np.ndarray:
    import torch

    xt = torch.from_numpy(x).unsqueeze(-1)
    with torch.no_grad():
        return np.concatenate([net(xt[i : i + 200]).argmax(-1).numpy()
                               for i in range(0, len(xt), 200)])


def paired(ok_a: np.ndarray, ok_b: np.ndarray, units: np.ndarray, draws: int = 2000) -> dict:
    """b - a in points, with a percentile interval and standard error over resampled units."""
    d = ok_b.astype(float) - ok_a
    names, inv = np.unique(units, return_inverse=True)
    per_unit = np.bincount(inv, d, len(names))
    count = np.bincount(inv, None, len(names))
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(draws):
        pick = rng.integers(len(names), size=len(names))
        boots.append(per_unit[pick].sum() / count[pick].sum())
    lo, hi = np.percentile(boots, [2.5, 97.5]) * 100
    return dict(diff=round(float(d.mean()) * 100, 2), ci95=[round(lo, 2), round(hi, 2)],
                se=round(float(np.std(boots)) * 100, 2))


def main() -> None:
    import torch

    from model.checkpoint import load_checkpoint

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    runs = dict(a.split("=", 1) for a in sys.argv[1:])
    rows = validate_on(load_bank(Path(os.environ.get("BANK", ".cache/data13"))),
                       os.environ.get("VALIDATE_ON", "").split())
    unit = os.environ.get("UNIT", "utterance")
    nets = {k: load_checkpoint(v)[0].eval() for k, v in runs.items()}
    out = {}
    for split, s_i, n in (("val", 1, int(os.environ.get("N_VAL", "400"))), ("test", 2, 600)):
        x, y, units = clips(rows, split, s_i, n, unit)
        ok = {k: predict(net, x) == y for k, net in nets.items()}
        res: dict = {k: round(float(v.mean()) * 100, 2) for k, v in ok.items()}
        ref, *others = list(nets)
        for k in others:
            res[f"{k}-{ref}"] = paired(ok[ref], ok[k], units)
        res.update(n_clips=int(len(y)), n_units=int(len(np.unique(units))))
        out[split] = res
        print(split, json.dumps(res), flush=True)
    if any(r.get("val_phrase") for r in rows):  # validation phrases: how often a keyword fires
        x, _, units = clips(rows, "val", 5, 300, unit, phrases=True)
        fires = {k: predict(net, x) < kws_mix.UNKNOWN for k, net in nets.items()}
        res = {k: round(float(v.mean()) * 100, 2) for k, v in fires.items()}
        ref, *others = list(nets)
        for k in others:
            res[f"{k}-{ref}"] = paired(fires[ref], fires[k], units)
        res.update(n_clips=int(len(x)), n_units=int(len(np.unique(units))))
        out["val_phrases_keyword_rate"] = res
        print("val phrases -> keyword", json.dumps(res), flush=True)
    path = Path(os.environ.get("OUT_JSON", ".cache/diag16/paired.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
