"""`s4d export onnx CHECKPOINT [--frame T] [--out DIR] [--max-length N]`.

Writes step.onnx (streaming frame step, dynamic batch and frame length <= T), batch.onnx
(whole sequences up to --max-length samples), config.json and export.json into DIR (default
CHECKPOINT/onnx, where `s4d serve --backend onnxruntime` picks them up), checks both graphs
with onnx.checker and compares ONNX Runtime with PyTorch on random inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a checkpoint (ONNX)",
                              description="Export a checkpoint for other inference engines.")
    sub = p.add_subparsers(dest="format", required=True)
    o = sub.add_parser("onnx", help="ONNX graphs: streaming frame step + batch path",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_argument("checkpoint", type=Path, help="checkpoint folder (config.json + model.safetensors)")
    o.add_argument("--frame", type=int, default=None,
                   help="frame size in samples (default: the checkpoint's task.frame_size)")
    o.add_argument("--out", type=Path, default=None, help="output folder (default: CHECKPOINT/onnx)")
    o.add_argument("--max-length", type=int, default=None,
                   help="longest sequence (samples) of the batch graph; longer ones run through "
                   "the step graph (default: 16384 steps)")
    o.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the ONNX Runtime vs PyTorch comparison")
    o.add_argument("--json", action="store_true", help="print the manifest as JSON")
    o.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, load_config
    from model.export import DEFAULT_MAX_STEPS, ExportError, export_checkpoint, verify_export

    out = args.out or args.checkpoint / "onnx"
    try:
        cfg = load_config(args.checkpoint)
        p = cfg.model.patch_size
        max_steps = DEFAULT_MAX_STEPS if args.max_length is None else max(1, args.max_length // p)
        info = export_checkpoint(args.checkpoint, out, frame_size=args.frame, max_steps=max_steps)
    except (CheckpointError, ExportError, ValueError) as exc:
        print(f"s4d export: {exc}", file=sys.stderr)
        return 1
    manifest = dict(info.manifest)
    if args.verify:
        try:
            errors = verify_export(info, args.checkpoint)
        except ImportError as exc:
            print(f"s4d export: not verified ({exc}); install the onnx extra", file=sys.stderr)
        else:
            manifest["verified_rel_error"] = errors
            bad = {k: v for k, v in errors.items() if not v <= 1e-5}
            if bad:
                print(f"s4d export: ONNX Runtime differs from PyTorch: {bad}", file=sys.stderr)
                return 1
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        for name in manifest["files"]:
            size = (info.directory / name).stat().st_size
            print(f"{info.directory / name}  {size / 1e6:.1f} MB")
        print(f"frame_size={info.frame_size} max_batch_samples={manifest['max_batch_samples']} "
              f"opset={manifest['opset']} streamable={info.streamable}")
        if "verified_rel_error" in manifest:
            print("ONNX Runtime vs PyTorch, max relative error: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in manifest["verified_rel_error"].items()))
    return 0
