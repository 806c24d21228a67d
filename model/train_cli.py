"""`s4d train --task kws|ecg|fsdd ...`: train a streamable S4D classifier (see model/train.py)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from .s4d import INITS


def register(sub) -> None:
    p = sub.add_parser("train", help="train an S4D classifier on a demo task")
    p.add_argument("--task", choices=("kws", "ecg", "fsdd"), help="required unless --resume")
    p.add_argument("--init", choices=INITS, default="legs", help="S4D initialisation of A")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default runs/<task>-<init>-s<seed>)")
    p.add_argument("--resume", help="a run folder to continue (reads its last/ state)")
    g = p.add_argument_group("overrides of the task preset (model/tasks.py)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--lr-ssm", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--d-model", type=int)
    g.add_argument("--d-state", type=int)
    g.add_argument("--n-layers", type=int)
    g.add_argument("--patch-size", type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--n-train", type=int)
    g.add_argument("--n-val", type=int)
    g.add_argument("--n-test", type=int)
    g.add_argument("--data-seed", type=int)
    g.add_argument("--train-subset", type=int, help="train on the first K generated examples only")
    g.add_argument("--offset-augment", type=float)
    g.add_argument("--noise-augment", type=float)
    g.add_argument("--scale-augment", type=float)
    g.add_argument("--stretch-augment", type=float, help="max time-stretch factor (> 1)")
    g.add_argument("--refit-on-val", action="store_true", default=None,
                   help="validation joins training; the last epoch is kept")
    g.add_argument("--cepstral-warp", type=float,
                   help="MFCC inputs: max formant scale factor of the vocal-tract warp (> 1)")
    s = p.add_argument_group("init ablation: one run per (init, seed), same data and budget")
    s.add_argument("--sweep-inits", help="comma-separated inits, e.g. legs,inv,lin,real,random")
    s.add_argument("--sweep-seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--stop-after", type=int, help="end this run after N epochs (resume later)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=run_train)


OVERRIDES = ("batch_size", "lr", "lr_ssm", "weight_decay", "warmup_epochs", "d_model", "d_state",
             "n_layers", "patch_size", "dropout", "n_train", "n_val", "n_test", "data_seed",
             "train_subset", "offset_augment", "noise_augment", "scale_augment",
             "stretch_augment", "cepstral_warp", "refit_on_val")  # fmt: skip


def run_train(args) -> int:
    import torch

    from .tasks import PRESETS, TaskPreset
    from .train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    command = "s4d train " + shlex.join(
        sys.argv[2:] if sys.argv[1:2] == ["train"] else sys.argv[1:]
    )
    if args.resume:
        recipe = json.loads((Path(args.resume) / "last" / "training_state.json").read_text())[
            "recipe"
        ]
        fields = TaskPreset.__dataclass_fields__
        preset = TaskPreset(**{k: v for k, v in recipe.items() if k in fields})
        if args.epochs:
            preset = preset.with_overrides(epochs=args.epochs)
        out = args.out or args.resume
        init, seed = recipe["init"], recipe["seed"]
    else:
        if not args.task:
            print("s4d train: --task is required (or --resume RUN)", file=sys.stderr)
            return 2
        overrides = {k: getattr(args, k) for k in OVERRIDES}
        preset = PRESETS[args.task].with_overrides(epochs=args.epochs, **overrides)
        out = args.out or f"runs/{args.task}-{args.init}-s{args.seed}"
        init, seed = args.init, args.seed
        if args.sweep_inits:
            return run_sweep(preset, out, args, command)
    metrics = train(preset, out, init=init, seed=seed, device=args.device, resume=args.resume,
                    progress=not args.no_progress, command=command,
                    stop_after=args.stop_after)  # fmt: skip
    if metrics:
        print(f"best checkpoint: {out} (test accuracy {metrics['test_accuracy']:.4f})")
    return 0


def run_sweep(preset, out: str, args, command: str) -> int:
    """Train every (init, seed) on the same data and budget; write sweep.json, print a table."""
    import statistics

    from .train import load_data, train

    data = load_data(preset)
    inits = args.sweep_inits.split(",")
    seeds = [int(s) for s in args.sweep_seeds.split(",")]
    runs, summary = [], {}
    for init in inits:
        accs = []
        for seed in seeds:
            m = train(preset, Path(out) / f"{init}-s{seed}", init=init, seed=seed,
                      device=args.device, data=data, progress=False, command=command,
                      log=lambda *_: None)  # fmt: skip
            runs.append(dict(init=init, seed=seed, **m))
            accs.append(m["test_accuracy"])
            print(f"{init} seed {seed}: test {m['test_accuracy']:.4f} val {m['val_accuracy']:.4f} "
                  f"({m['train_wall_s']:.0f}s)", flush=True)  # fmt: skip
        summary[init] = dict(mean=statistics.mean(accs), std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                             accuracies=accs)  # fmt: skip
    Path(out, "sweep.json").write_text(
        json.dumps(dict(command=command, summary=summary, runs=runs), indent=1)
    )
    print("init    test accuracy (mean ± std over seeds)")
    for init, s in summary.items():
        print(f"{init:7s} {100 * s['mean']:.2f} ± {100 * s['std']:.2f}")
    return 0
