"""A weight average ("model soup", Wortsman et al. 2022) of stream-trained keyword-event
runs that descend from one checkpoint: one network of the same shape and state size, so
nothing in the product changes. The config is the first run's, its training record naming
the runs averaged; the detector is chosen afterwards with `train_streams --rechoose`.

    python bench/experiments/kws_maxpool_2026_11_27/soup.py OUT RUN [RUN ...]
"""

import sys
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, save_checkpoint


def main(out: Path, runs: list[Path]) -> None:
    nets = [load_checkpoint(r)[0] for r in runs]
    _, cfg = load_checkpoint(runs[0])
    states = [n.state_dict() for n in nets]
    mean = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            mean[k] = torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype)
        else:
            assert all(torch.equal(s[k], v) for s in states), k
            mean[k] = v
    nets[0].load_state_dict(mean)
    training = dict(cfg.training, soup_of=[str(r) for r in runs],
                    soup_command="python bench/experiments/kws_maxpool_2026_11_27/soup.py "
                                 + " ".join([str(out)] + [str(r) for r in runs]))
    save_checkpoint(out, nets[0], cfg.model_copy(update={"training": training}))
    print(f"{out}: mean of {len(runs)} runs, {len(mean)} tensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]])
