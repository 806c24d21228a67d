"""`s4d import --format s4-example|s4-block WEIGHTS --meta META.json --out DIR`.

Converts a state dict trained with the reference S4 code (state-spaces/s4) into a checkpoint
folder (config.json + model.safetensors + CARD.md) that `s4d info`, `s4d serve` and
`s4d export onnx` take like any other. See model/importers.py for the layouts and what is
refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    from .importers import FORMATS

    p = subparsers.add_parser(
        "import", help="convert weights trained with the reference S4 code into a checkpoint",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="s4-example: example.py's S4Model with the standalone S4D layer; "
                   "s4-block: the same model with S4Block (diagonal kernel)")
    p.add_argument("weights", type=Path, help=".safetensors, or .pt/.pth (torch.load weights_only)")
    p.add_argument("--meta", type=Path, required=True,
                   help="META.json: sample_rate, classes, frame_size, prenorm (+ options)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out folder")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .importers import ImportRefused, import_model

    try:
        out = import_model(args.format, args.weights, args.meta, args.out, force=args.force)
    except ImportRefused as exc:
        print(f"s4d import: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: checkpoint written (config.json, model.safetensors, CARD.md); "
          f"check it with `s4d info {out}`")
    return 0
