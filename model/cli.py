"""`s4d info CHECKPOINT`: what a checkpoint is and what streaming it costs."""

from __future__ import annotations

import json

import torch

from .checkpoint import load_checkpoint
from .streaming import NotStreamableError, StreamingNetwork


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a checkpoint folder")
    p.add_argument("checkpoint", help="folder with config.json + model.safetensors")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_info)


def describe(path: str) -> dict:
    network, config = load_checkpoint(path)
    info = {
        "path": path,
        "task": config.task.model_dump(),
        "model": config.model.model_dump(),
        "parameters": network.num_parameters(),
        "metrics": config.metrics,
    }
    try:
        with torch.no_grad():
            streaming = StreamingNetwork(network, config.task.frame_size)
        info["streamable"] = True
        info["state_bytes_per_session"] = streaming.state_bytes_per_session
    except NotStreamableError as exc:
        info["streamable"] = False
        info["not_streamable_reason"] = str(exc)
    return info


def run_info(args) -> int:
    info = describe(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    t, m = info["task"], info["model"]
    print(f"{args.checkpoint}: {t['name']} ({t['description']})")
    print(f"  input: {t['input_channels']} channel(s) at {t['sample_rate']} Hz, frame {t['frame_size']} samples")
    print(f"  classes: {', '.join(t['class_names'])}")
    print(
        f"  S4D: H={m['d_model']} N={m['d_state']} layers={m['n_layers']} init={m['init']} "
        f"{m['discretization']} pooling={m['pooling']} patch={m['patch_size']}"
    )
    print(f"  parameters: {info['parameters']:,}")
    if info["streamable"]:
        print(f"  streaming state: {info['state_bytes_per_session']:,} bytes per session")
    else:
        print(f"  not streamable: {info['not_streamable_reason']}")
    shown = {"parameters", "state_bytes_per_session"}  # printed above from the network
    for k, v in info["metrics"].items():
        if k not in shown and v is not None:  # None: not measured (e.g. no validation split)
            print(f"  {k}: {v}")
    return 0
