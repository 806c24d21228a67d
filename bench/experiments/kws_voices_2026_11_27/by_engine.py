"""X_F against M_F per engine, on the fold's validation clips and the test clips (the clips of
paired.py, same seeds): where more voices help or hurt. CPU.

    BANK=.cache/data13m python by_engine.py X=DIR M=DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "experiments" / "kws_data_2026_11_27"))

from paired import clips, paired, predict  # noqa: E402

from model.data.kws_bank import load_bank, validate_on  # noqa: E402

FOLD = ("flite:slt festival:don_diphone rhvoice:bdl rhvoice:lyubov mbrola:mb-us1 "
        "mbrola:mb-gr2-en mbrola:mb-hu1-en").split()

if __name__ == "__main__":
    import torch

    from model.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    runs = dict(a.split("=", 1) for a in sys.argv[1:])
    nets = {k: load_checkpoint(v)[0].eval() for k, v in runs.items()}
    rows = validate_on(load_bank(Path(os.environ.get("BANK", ".cache/data13m"))), FOLD)
    out = {}
    for split, s_i, n in (("val", 1, 1600), ("test", 2, 600)):
        x, y, units = clips(rows, split, s_i, n, "voice")
        ok = {k: predict(net, x) == y for k, net in nets.items()}
        engine = np.array([u.split(":")[0] for u in units])
        ref, other = list(nets)
        for e in dict.fromkeys(engine):
            m = engine == e
            res = {k: round(float(v[m].mean()) * 100, 2) for k, v in ok.items()}
            res[f"{other}-{ref}"] = paired(ok[ref][m], ok[other][m], units[m])
            out[f"{split}:{e}"] = res
            print(split, e, json.dumps(res), flush=True)
    Path(os.environ.get("OUT_JSON", "/tmp/by_engine.json")).write_text(json.dumps(out, indent=1))
