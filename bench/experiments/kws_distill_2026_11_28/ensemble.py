"""Would a teacher ensemble help? The voice fold's validation clips (prep-kws's, as paired.py
draws them) through each fold checkpoint and through the mean of their log-probabilities,
with a bootstrap over voices against the first checkpoint. CPU; decides only whether the
distillation run (RULES.md) is worth device time.

    BANK=.cache/data13x N_VAL=1600 UNIT=voice VALIDATE_ON="..." python ensemble.py A=ckpt B=ckpt
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parent / "kws_data_2026_11_27"))

from paired import clips, paired  # noqa: E402

from model.data.kws_bank import load_bank, validate_on  # noqa: E402


def log_probs(net, x: np.ndarray) -> np.ndarray:
    import torch

    xt = torch.from_numpy(x).unsqueeze(-1)
    with torch.no_grad():
        return np.concatenate([torch.log_softmax(net(xt[i : i + 200]), -1).numpy()
                               for i in range(0, len(xt), 200)])


def main() -> None:
    import torch

    from model.checkpoint import load_checkpoint

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    runs = dict(a.split("=", 1) for a in sys.argv[1:])
    rows = validate_on(load_bank(Path(os.environ.get("BANK", ".cache/data13x"))),
                       os.environ.get("VALIDATE_ON", "").split())
    x, y, units = clips(rows, "val", 1, int(os.environ.get("N_VAL", "1600")),
                        os.environ.get("UNIT", "voice"))
    lp = {k: log_probs(load_checkpoint(v)[0].eval(), x) for k, v in runs.items()}
    lp["ensemble"] = np.mean(list(lp.values()), axis=0)
    ok = {k: v.argmax(-1) == y for k, v in lp.items()}
    ref = next(iter(runs))
    out = {k: round(float(v.mean()) * 100, 2) for k, v in ok.items()}
    out.update({f"{k}-{ref}": paired(ok[ref], ok[k], units) for k in ok if k != ref})
    out.update(n_clips=int(len(y)), n_units=int(len(np.unique(units))))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
