"""Voice perturbation for training speech: new vocal tracts for the voices we have.

The keyword models overfit to their few training voices (flite and festival have two or three
each): accuracy on an unheard voice of the same engine stays ~20 points below the training
voices. Speed perturbation moves pitch and formants together; this moves the formants alone
(a vocal-tract-length change, as VTLP, Jaitly & Hinton 2013), so that with speed perturbation
pitch, formants and tempo vary independently.

Per STFT frame the log-magnitude spectrum splits into a smooth envelope (low quefrencies of the
real cepstrum: the vocal tract) and the rest (harmonics: the source). The envelope is warped
along frequency, E'(f) = E(f / alpha), the source is kept, the phase is kept. alpha > 1 moves
formants up (a shorter vocal tract), alpha < 1 down. alpha = 1 returns the input.

Measured (bench/RESULTS.md, 2026-11-26): it did not close the gap to unheard voices for
kws-s4d, and it made kws-events-s4d worse; off by default (`FORMANTS`, `--voice-copies`,
`--cepstral-warp` turn it on).
"""

from __future__ import annotations

import math

import torch

N_FFT, HOP = 512, 128  # 32 ms / 8 ms at 16 kHz
LIFTER = 30  # quefrency cut (samples): keeps the envelope below pitch periods >= ~2 ms
MAX_GAIN_DB = 30.0  # bound on the per-bin gain, so a warp into a spectral valley stays speech


def shift_formants(x: torch.Tensor, alpha: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP,
                   lifter: int = LIFTER) -> torch.Tensor:
    """x [B, L] float audio, alpha [B] formant scale factors; returns [B, L]."""
    b, length = x.shape
    if length < n_fft:  # too short for one frame: nothing to warp
        return x.clone()
    win = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop, window=win, return_complex=True)  # [B, F, T]
    bins = spec.shape[1]
    log_mag = spec.abs().clamp(min=1e-7).log()
    cep = torch.fft.irfft(log_mag, n=n_fft, dim=1)
    cep[:, lifter : n_fft - lifter + 1] = 0
    env = torch.fft.rfft(cep, dim=1).real  # [B, F, T] log envelope
    src = (torch.arange(bins, device=x.device, dtype=x.dtype).view(1, -1)
           / alpha.to(x.dtype).view(-1, 1)).clamp(0, bins - 1)  # [B, F]
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=bins - 1)
    frac = (src - lo).unsqueeze(-1)
    frames = env.shape[2]
    warped = (env.gather(1, lo.unsqueeze(-1).expand(-1, -1, frames)) * (1 - frac)
              + env.gather(1, hi.unsqueeze(-1).expand(-1, -1, frames)) * frac)
    limit = MAX_GAIN_DB / 20 * math.log(10.0)
    gain = (warped - env).clamp(-limit, limit).exp()
    out = torch.istft(spec * gain, n_fft, hop, window=win, length=length)
    # same peak as the input: the level is the caller's business
    peak_in = x.abs().amax(1, keepdim=True)
    return out * peak_in / out.abs().amax(1, keepdim=True).clamp(min=1e-9)


def random_alpha(gen: torch.Generator, n: int, lo: float, hi: float,
                 device="cpu") -> torch.Tensor:
    """Log-uniform scale factors in [lo, hi] (a shift up is as likely as the same shift down)."""
    u = torch.rand(n, generator=gen, device=device)
    return torch.exp(math.log(lo) + u * math.log(hi / lo))


def cepstral_warp(alpha: torch.Tensor, n_ceps: int, n_bands: int = 40,
                  f_max: float = 4000.0) -> torch.Tensor:
    """The same vocal-tract change for MFCC features: [B, n_ceps, n_ceps] matrices T with
    c' = T c. The cepstrum is read back into a smooth log-mel spectrum (inverse DCT-II on
    `n_bands` mel bands up to `f_max`), warped along frequency (E'(f) = E(f / alpha)) and
    transformed again. Exact for the truncated cepstrum; the band count and f_max are
    assumptions where the features' own settings are unknown (they only shape the warp)."""
    dtype = torch.float64
    j = torch.arange(n_bands, dtype=dtype)
    mel_max = 2595 * math.log10(1 + f_max / 700)
    centre = 700 * (10 ** ((j + 0.5) / n_bands * mel_max / 2595) - 1)  # band centres (Hz)
    k = torch.arange(n_ceps, dtype=dtype).view(-1, 1)
    dct = torch.cos(math.pi * k * (j + 0.5) / n_bands) * math.sqrt(2 / n_bands)
    dct[0] /= math.sqrt(2)  # orthonormal DCT-II rows: dct @ dct.T = I
    src_hz = centre.view(1, -1) / alpha.to(dtype).view(-1, 1)  # [B, M]
    src_mel = 2595 * torch.log10(1 + src_hz / 700)
    pos = (src_mel / mel_max * n_bands - 0.5).clamp(0, n_bands - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n_bands - 1)
    frac = pos - lo
    interp = torch.zeros(len(alpha), n_bands, n_bands, dtype=dtype)  # warped = interp @ logmel
    interp.scatter_add_(2, lo.unsqueeze(-1), (1 - frac).unsqueeze(-1))
    interp.scatter_add_(2, hi.unsqueeze(-1), frac.unsqueeze(-1))
    return (dct @ interp @ dct.T).float()
