"""Heart rate per window from a classical R-peak detector (for checks on real ECG).

The model's rate calls are compared with an independent, non-learned reference: neurokit2's
default QRS detector (`ecg_peaks`, method "neurokit": gradient-based, Makowski et al. 2021)
on the cleaned signal (`ecg_clean`). Used by the MIT-BIH 208 sanity check and by the test that
runs the README's commands. Rate bands follow the usual clinical convention.
"""

from __future__ import annotations

import numpy as np

BRADY_BELOW = 60.0  # bpm
TACHY_ABOVE = 100.0


def rate_band(bpm: float) -> str:
    """'brady' (< 60 bpm), 'tachy' (> 100 bpm) or 'normal_or_other'."""
    if bpm < BRADY_BELOW:
        return "brady"
    if bpm > TACHY_ABOVE:
        return "tachy"
    return "normal_or_other"


def model_band(label: str) -> str:
    """The model's class collapsed onto the same three bands (any other class: normal_or_other)."""
    return label if label in ("brady", "tachy") else "normal_or_other"


def window_heart_rates(ecg_mv: np.ndarray, sample_rate: int, window_s: float = 10.0) -> list[float]:
    """Mean heart rate (bpm, 60 / mean RR) of each whole window, from R peaks found on the
    whole signal (so beats at window edges are found with context)."""
    import neurokit2 as nk

    x = np.asarray(ecg_mv, dtype=np.float64).ravel()
    clean = nk.ecg_clean(x, sampling_rate=sample_rate)
    _, info = nk.ecg_peaks(clean, sampling_rate=sample_rate)
    peaks = np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
    win = int(round(window_s * sample_rate))
    rates = []
    for start in range(0, len(x) - win + 1, win):
        p = peaks[(peaks >= start) & (peaks < start + win)]
        rates.append(float(60.0 * sample_rate / np.diff(p).mean()) if len(p) >= 2 else 0.0)
    return rates
