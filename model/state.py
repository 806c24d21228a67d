"""The streaming state layout of a network, in one place: a wire format.

Snapshots (server/snapshot.py), the ONNX step graph's inputs and outputs (model/export.py) and
every backend's state slab use these names and shapes, so they must not change without a new
snapshot and export format. Per session: the S4D modes of every layer as real and imaginary
parts (float32 [layers, H, N/2] each) and the pooling accumulator with its step count.
"""

from __future__ import annotations

import math

import torch

from .config import ModelConfig

STATE_NAMES = ("x_re", "x_im", "pool", "count")


def state_row_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """One session's state shapes (no batch dimension), in STATE_NAMES order."""
    modes = (cfg.n_layers, cfg.d_model, cfg.n_modes)
    return {"x_re": modes, "x_im": modes, "pool": (cfg.d_model,), "count": (1,)}


def state_shapes(cfg: ModelConfig, batch: int) -> dict[str, tuple[int, ...]]:
    """Per-session streaming state for `batch` sessions (batch dimension first)."""
    return {k: (batch, *v) for k, v in state_row_shapes(cfg).items()}


def state_bytes_per_session(cfg: ModelConfig, itemsize: int = 4) -> int:
    return itemsize * sum(math.prod(shape) for shape in state_row_shapes(cfg).values())


def zero_state(cfg: ModelConfig, batch: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(shape, dtype=dtype, device=device)
            for name, shape in state_shapes(cfg, batch).items()}
