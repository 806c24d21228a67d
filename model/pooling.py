"""Pooling over steps, in its two exact forms: over a whole sequence (the batch path) and
frame by frame with a carried accumulator (the streaming paths).

mean: running sum / count; last: the latest step; ema: the bias-corrected exponential moving
average p_t = a p_(t-1) + (1 - a) h_t, reported as p / (1 - a^count); none: per-step
outputs. Both forms give the same prediction after any prefix (tests/test_streaming_equivalence).
"""

from __future__ import annotations

import math

import torch

from .config import ModelConfig


def valid_mask(n_valid: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, S, 1]: 1 on the first n_valid steps of each sequence, 0 on the padding."""
    pos = torch.arange(steps, device=n_valid.device)
    return (pos.unsqueeze(0) < n_valid.unsqueeze(1)).unsqueeze(-1).to(dtype)


def ema_weights(n_valid: torch.Tensor, steps: int, log_decay: float, dtype: torch.dtype):
    """[B, S, 1] weights of pooling 'ema' over the first n_valid steps: a^(n-1-s) / sum, in
    float64 then `dtype`. The weighted sum is the bias-corrected moving average
    p_(n-1) / (1 - a^n) that the recurrence p_t = a p_(t-1) + (1 - a) h_t reaches after n
    steps (pool_frame), computed directly: exact, no scan."""
    pos = torch.arange(steps, device=n_valid.device, dtype=torch.float64)
    age = (n_valid.to(torch.float64).unsqueeze(1) - 1) - pos.unsqueeze(0)  # [B, S]
    w = torch.where(age >= 0, torch.exp(age.clamp(min=0) * log_decay), torch.zeros_like(age))
    return (w / w.sum(1, keepdim=True)).unsqueeze(-1).to(dtype)


def pool_sequence(h: torch.Tensor, n_valid: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """The decoder input of a batch forward from features h [B, S, H] whose first n_valid
    steps are real: [B, H] (mean | last | ema) or h itself (none)."""
    pooling = cfg.pooling
    if pooling == "none":
        return h
    steps = h.shape[1]
    if pooling == "mean":
        mask = valid_mask(n_valid, steps, h.dtype)
        return (h * mask).sum(1) / n_valid.unsqueeze(-1).to(h.dtype)
    if pooling == "ema":
        return (h * ema_weights(n_valid, steps, cfg.ema_log_decay, h.dtype)).sum(1)
    if pooling == "last":
        idx = (n_valid - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[2])
        return torch.gather(h, 1, idx).squeeze(1)
    raise ValueError(f"unknown pooling {pooling!r}")


def pool_frame(h: torch.Tensor, pool: torch.Tensor, count: torch.Tensor,
               cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder input, new pool) after a frame of features h [B, S, H]; `count` [B, 1]
    already includes the S steps. The decoder input is [B, H], or h for pooling none.
    Written for the ONNX step graph too: every output is computed, never an alias of an input."""
    pooling = cfg.pooling
    if pooling == "mean":
        pool = pool + h.sum(1)
        return pool / count, pool
    if pooling == "ema":
        return _ema_frame(h, pool, count, cfg.ema_log_decay)
    if pooling == "last":
        pool = h[:, -1] + 0 * pool  # keeps `pool` an input of an exported graph
        return pool, pool
    if pooling == "none":
        return h, pool + 0  # an exported output must not alias a graph input
    raise ValueError(f"unknown pooling {pooling!r}")


def _ema_frame(h, pool, count, log_a: float):
    """Pooling 'ema' over a frame of S steps: p' = a^S p + sum_s (1 - a) a^(S-1-s) h_s, the
    recurrence in closed form; the output is the bias-corrected p' / (1 - a^count) (a mean
    over the first steps, forgetting with time constant tau later), as the batch form.
    Coefficients in float64, from log a."""
    powers = torch.exp(
        torch.arange(h.shape[1], -1, -1, device=h.device, dtype=torch.float64) * log_a
    )  # a^S, a^(S-1), ..., a^0
    coef = (powers[1:] * -math.expm1(log_a)).to(h.dtype)  # (1 - a) a^(S-1-s)
    pool = powers[0].to(h.dtype) * pool + (h * coef.view(1, -1, 1)).sum(1)
    norm = 1 - torch.exp(count.to(torch.float64) * log_a)  # 1 - a^count, float64
    return pool / norm.to(h.dtype), pool
