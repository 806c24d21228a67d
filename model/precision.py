"""Precision modes of the serving forward passes: fp32 | tf32 | bf16.

The SSM state and its carry (x' = dA^b x + ...) stay float32 in every mode, so a stream's
state never drifts by mode; only matrix products change:

- fp32: IEEE float32 everywhere (TF32 explicitly off); the default, exact to ~1e-6.
- tf32: float32 tensors, matrix products on TF32 tensor cores (10-bit mantissa inputs, float32
  accumulation). CUDA only: on the CPU this mode computes exactly what fp32 does.
- bf16: the GEMM-heavy parts in bfloat16 with float32 accumulation: the SSM frame GEMMs
  (explicit casts, float32 results) and the GLU linear of every block (autocast); the
  residual stream, norms, the carry and the state stay float32, and so do the encoder and
  decoder (`float32_region`: tiny GEMMs, and in bfloat16 the encoder would round raw input
  samples to 8 significant bits and the decoder the logits; measured on the kws test clips,
  the decoder alone made a third of the probability error).

The TF32 switch is process-wide in torch, so `matmul_precision` sets it for the duration of
one forward and restores it (the engine steps one model at a time on one thread; a CUDA graph
captured inside keeps the kernels chosen then).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(mode: str) -> str:
    if mode not in PRECISIONS:
        raise ValueError(f"unknown precision {mode!r}; expected one of {', '.join(PRECISIONS)}")
    return mode


def float32_region(device_type: str):
    """Autocast off inside, when it is on (a plain no-op context otherwise, so exported
    graphs do not change)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def matmul_precision(mode: str, device: torch.device | str) -> Iterator[None]:
    """The context a forward pass of `mode` runs in on `device` (see the module docstring)."""
    device = torch.device(device)
    check_precision(mode)
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = mode == "tf32" and device.type == "cuda"
    try:
        if mode == "bf16":
            # no cast cache: a CUDA graph may be captured inside (torch.cuda.graph's advice)
            with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False):
                yield
        else:
            yield
    finally:
        matmul.allow_tf32 = before
