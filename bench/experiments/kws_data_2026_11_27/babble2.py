"""Keyword checkpoints on the six test sets with babble from every test utterance (as the test
sets are made) and from non-keyword utterances only (`kws_mix` babble="non-keyword"); every
other draw is the same.

    python babble2.py checkpoints/kws-s4d [more checkpoints]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from model.data import kws_mix  # noqa: E402
from model.data.kws_bank import ENGINES, load_bank  # noqa: E402


def main() -> None:
    import torch

    from model.checkpoint import load_checkpoint

    ckpts = sys.argv[1:] or ["checkpoints/kws-s4d"]
    rows = load_bank(ROOT / ".cache" / "data13")
    nets = {c: load_checkpoint(c)[0].eval() for c in ckpts}
    out = {}
    for babble in ("any", "non-keyword"):
        ys, preds = [], {c: [] for c in ckpts}
        for e_i, e in enumerate(ENGINES):
            pool = kws_mix.select(rows, engines=(e,), splits=("test",),
                                  kinds=("keyword", "unknown"))
            x, y = kws_mix.make_clips(pool, 600, seed=0, kind="words", code=100 + 10 * e_i + 2,
                                      workers=2, babble=babble)
            ys.append(y)
            xt = torch.from_numpy(x).unsqueeze(-1)
            with torch.no_grad():
                for name, net in nets.items():
                    preds[name].append(np.concatenate([net(xt[i : i + 200]).argmax(-1).numpy()
                                                       for i in range(0, len(xt), 200)]))
        y = np.concatenate(ys)
        for name in ckpts:
            ok = np.concatenate(preds[name]) == y
            out[f"{name}|{babble}"] = dict(
                all=round(float(ok.mean()), 4),
                per_engine={e: round(float(ok[i * 600 : (i + 1) * 600].mean()), 4)
                            for i, e in enumerate(ENGINES)})
            print(name, babble, json.dumps(out[f"{name}|{babble}"]), flush=True)


if __name__ == "__main__":
    main()
