"""Checkpoints: a folder with config.json + model.safetensors. Loading never unpickles."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import CheckpointConfig
from .network import S4DNetwork

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, malformed, or does not match its config."""


def save_checkpoint(directory: str | Path, network: S4DNetwork, config: CheckpointConfig) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if config.model != network.cfg:
        raise CheckpointError("config.model differs from the network's own config")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "s4d-serve/1"})
    text = json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=False)
    (directory / CONFIG_FILE).write_text(text + "\n")
    return directory


def load_config(directory: str | Path) -> CheckpointConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        return CheckpointConfig.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    except ValidationError as exc:
        raise CheckpointError(f"{path}: invalid config: {exc}") from exc


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[S4DNetwork, CheckpointConfig]:
    """The network (eval mode, on `device` in `dtype`) and its config."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint folder")
    config = load_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from exc
    network = S4DNetwork(config.model, seed=None)
    expected = network.state_dict()
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unknown or missing:
        raise CheckpointError(
            f"{weights}: does not match config.json: unknown keys {unknown[:5]}, missing keys {missing[:5]}"
        )
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{weights}: {key} has shape {tuple(tensor.shape)}, config implies {tuple(expected[key].shape)}"
            )
        if not torch.is_floating_point(tensor):
            raise CheckpointError(f"{weights}: {key} has dtype {tensor.dtype}, expected a float")
    network.load_state_dict(tensors, strict=True)
    return network.to(device=device, dtype=dtype).eval(), config
