"""Log-mel patch features: a fixed spectral front end that keeps streaming exact.

A raw-sample encoder (`front_end="linear"`, the reference S4 example's) must learn its own
filterbank, and with few speakers it learns theirs. `front_end="logmel"` gives the first
S4D layer what speech front ends give: per patch of p samples (no overlap: patch 160 at 16 kHz
is a 10 ms hop) a Tukey-windowed power spectrum, pooled by triangular mel filters and logged,
then standardised per band with training-set statistics. Patches do not overlap, so a stream
carries no state beyond the S4D layers' and chunk boundaries change nothing; the DFT is two
matrix products, which every backend (PyTorch, ONNX Runtime, the fused GPU step) runs as is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

LOG_EPS = 1e-6  # power floor: far below a -75 dBFS patch after input normalisation
TUKEY_ALPHA = 0.25  # taper a quarter of each patch: little leakage, little loss at the edges


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(patch: int, sample_rate: int, n_mels: int, f_min: float = 20.0) -> np.ndarray:
    """[patch // 2 + 1, n_mels] triangular filters on the HTK mel scale, each summing to 1, so
    every band is an average power; a band narrower than the DFT bin spacing still gets the
    nearest bin (no empty band, no log of the floor alone)."""
    freqs = np.fft.rfftfreq(patch, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(sample_rate / 2), n_mels + 2))
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rise = (freqs - lo) / (mid - lo)
        fall = (hi - freqs) / (hi - mid)
        fb[:, m] = np.clip(np.minimum(rise, fall), 0.0, None)
        if fb[:, m].sum() == 0:
            fb[np.argmin(np.abs(freqs - mid)), m] = 1.0
    return fb / fb.sum(0, keepdims=True)


def tukey_window(n: int, alpha: float = TUKEY_ALPHA) -> np.ndarray:
    """Flat top, cosine tapers over alpha / 2 of the patch at each end."""
    x = (np.arange(n) + 0.5) / n
    w = np.ones(n)
    edge = alpha / 2
    lo, hi = x < edge, x > 1 - edge
    w[lo] = 0.5 * (1 - np.cos(np.pi * x[lo] / edge))
    w[hi] = 0.5 * (1 - np.cos(np.pi * (1 - x[hi]) / edge))
    return w


def spec_augment(feats: torch.Tensor, max_steps: int, max_bands: int, n_masks: int = 2):
    """SpecAugment's masks on standardised features [B, S, C]: per sequence, n_masks time spans
    of U{0..max_steps} steps and n_masks bands of U{0..max_bands} adjacent mel bands set to 0
    (the training-set mean). Training only; drawn on the features' device."""
    b, s, c = feats.shape
    dev = feats.device
    keep = torch.ones(b, s, c, dtype=torch.bool, device=dev)
    for size, axis, width in ((s, 1, max_steps), (c, 2, max_bands)):
        if not width:
            continue
        pos = torch.arange(size, device=dev).unsqueeze(0)
        for _ in range(n_masks):
            w = torch.randint(0, width + 1, (b, 1), device=dev)
            start = (torch.rand(b, 1, device=dev) * (size - w + 1)).long()
            span = (pos >= start) & (pos < start + w)
            keep &= ~span.unsqueeze(-1 if axis == 1 else 1)
    return feats * keep


class LogMelPatches(nn.Module):
    """[B, S, p] patches -> [B, S, n_mels] standardised log-mel energies. `masks` = (max_steps,
    max_bands) turns on SpecAugment while the module is in training mode (set by the trainer,
    not part of the checkpoint)."""

    masks: tuple[int, int] | None = None

    def __init__(self, patch: int, sample_rate: int, n_mels: int,
                 mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        t = np.arange(patch)[:, None] * np.arange(patch // 2 + 1)[None, :] * (2 * np.pi / patch)
        w = tukey_window(patch)[:, None]
        f32 = dict(dtype=torch.float32)
        # fixed (recomputed from the config on load): not part of the checkpoint's tensors
        self.register_buffer("dft_cos", torch.tensor(w * np.cos(t), **f32), persistent=False)
        self.register_buffer("dft_sin", torch.tensor(w * np.sin(t), **f32), persistent=False)
        self.register_buffer("mel", torch.tensor(mel_filterbank(patch, sample_rate, n_mels), **f32),
                             persistent=False)
        self.register_buffer("mean", torch.tensor(mean or [0.0] * n_mels, **f32), persistent=False)
        self.register_buffer("std", torch.tensor(std or [1.0] * n_mels, **f32), persistent=False)

    def log_mel(self, patches: torch.Tensor) -> torch.Tensor:
        """Before standardisation (what the training-set statistics are taken of)."""
        re = patches @ self.dft_cos.to(patches.dtype)
        im = patches @ self.dft_sin.to(patches.dtype)
        return torch.log((re * re + im * im) @ self.mel.to(patches.dtype) + LOG_EPS)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        feats = (self.log_mel(patches) - self.mean.to(patches.dtype)) / self.std.to(patches.dtype)
        if self.training and self.masks:
            feats = spec_augment(feats, *self.masks)
        return feats
