"""How often noise-only clips of the validation material fire a keyword, for a reference and a
candidate checkpoint (the decision of RULES.md's louder-silence refit): 600 clips drawn like the
card's noise-only test set (`kind="noise"`, -75..-20 dBFS, white / pink / babble, dither) but
from the validation rows (code 198), paired over clips with a bootstrap.

    python noise_val.py REF=checkpoints/kws-s4d CAND=runs/kws-s [BANK=.cache/data13]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "experiments" / "kws_data_2026_11_27"))

from paired import paired, predict  # noqa: E402

from model.data import kws_mix  # noqa: E402
from model.data.kws_bank import load_bank  # noqa: E402
from scripts.eval_data13 import noise_by_level  # noqa: E402


def main() -> None:
    import torch

    from model.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    rows = load_bank(Path(args.pop("BANK", str(ROOT / ".cache" / "data13"))))
    x, _, cond = kws_mix.make_clips(kws_mix.select(rows, splits=("val",)), 600, seed=0,
                                    kind="noise", code=198, workers=2, conditions=True)
    preds = {k: predict(load_checkpoint(v)[0].eval(), x) for k, v in args.items()}
    fires = {k: p < kws_mix.UNKNOWN for k, p in preds.items()}
    ref, *others = list(args)
    out = {k: dict(keyword_rate=round(float(v.mean()) * 100, 2),
                   by_level=noise_by_level(preds[k], cond)) for k, v in fires.items()}
    for k in others:  # candidate - reference, in points of keyword fires
        out[f"{k}-{ref}"] = paired(fires[ref], fires[k], np.arange(len(x)).astype(str))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
