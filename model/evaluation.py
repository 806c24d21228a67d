"""Scores of a classifier's probabilities on a labelled set: accuracy, per-class accuracy,
confusion matrix and expected calibration error (ECE).

ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the top-class confidence
is split into `n_bins` equal-width bins over [0, 1]; ECE = sum over bins of
(bin size / n) * |accuracy in bin - mean confidence in bin|. 0 is perfectly calibrated.
"""

from __future__ import annotations

import numpy as np
import torch


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE of probabilities [n, K] against integer labels [n] (equal-width confidence bins)."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    if len(y) == 0:
        return float("nan")
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    # bin b holds confidences in (b/n_bins, (b+1)/n_bins]; a confidence of 0 goes to bin 0
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Per non-empty bin: range, count, accuracy, mean confidence (for a reliability table)."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    conf, correct = probs.max(1), probs.argmax(1) == y
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return [dict(lo=b / n_bins, hi=(b + 1) / n_bins, n=int((bins == b).sum()),
                 accuracy=float(correct[bins == b].mean()), confidence=float(conf[bins == b].mean()))
            for b in range(n_bins) if (bins == b).any()]


@torch.no_grad()
def predict_probs(net, x: torch.Tensor, device, lengths: torch.Tensor | None = None,
                  batch_size: int = 128) -> np.ndarray:
    """Softmax probabilities [n, K] of a network over inputs [n, L, C] (eval mode)."""
    net.eval()
    out = []
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size].to(device)
        lb = None if lengths is None else lengths[s : s + batch_size].to(device)
        out.append(torch.softmax(net(xb, lb).float(), -1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def summarize(probs: np.ndarray, y: np.ndarray, names: list[str], n_bins: int = 15) -> dict:
    """accuracy, per-class accuracy, confusion (rows true), ECE, n."""
    y = np.asarray(y)
    pred = probs.argmax(1)
    k = len(names)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    per_class = {n: round(float(cm[i, i] / cm[i].sum()), 4) for i, n in enumerate(names)
                 if cm[i].sum()}
    return dict(accuracy=round(float((pred == y).mean()), 4), per_class=per_class,
                confusion=cm.tolist(), ece=round(expected_calibration_error(probs, y, n_bins), 4),
                n=int(len(y)))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n: how far a share measured on a few
    hundred clips or keywords could move on another draw (the cards state it)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def wilson_text(k: int, n: int) -> str:
    """'45.5-49.6 %': the 95 % Wilson interval of k / n, as the cards print it."""
    lo, hi = wilson_interval(k, n)
    return f"{100 * lo:.1f}-{100 * hi:.1f} %"


def poisson_rate_interval(k: int, exposure: float, conf: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval of an event rate, k events in `exposure` (e.g. hours): false
    alarms are counted in single digits, so "1.0 per hour" is a wide statement."""
    from scipy.stats import chi2

    alpha = 1.0 - conf
    lo = 0.0 if k == 0 else chi2.ppf(alpha / 2, 2 * k) / 2
    hi = chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2
    return (float(lo / exposure), float(hi / exposure))
