"""MIT-BIH 208 check of ecg-s4d: is the reference detector the problem? (issue 13)

The card's check compares the model's rate band per 10 s window with neurokit2's default
R-peak detector. Here seven classical detectors (six of neurokit2, sleepecg's) give their
band per window; the windows where all seven agree are the ones where the reference is not
in doubt, and the model's agreement there says whether its misses are its own. Last, the
band of neurokit's median RR interval per window (robust to pauses) against the model's.

    python bench/experiments/ecg208_2026_11_27/detectors.py
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

METHODS = ("neurokit", "pantompkins1985", "hamilton2002", "engzeemod2012", "christov2004",
           "rodrigues2021")


def main() -> int:
    warnings.filterwarnings("ignore")
    import neurokit2 as nk
    import sleepecg
    from scipy.signal import resample_poly

    from model.data.mitbih import excerpt_mv
    from model.data.rpeaks import rate_band

    fs, win = 250, 2500
    x = resample_poly(excerpt_mv(), 25, 36)  # as model.data.mitbih.windows
    rows = json.loads((ROOT / "bench/model_eval/ecg-s4d.json").read_text())["mitbih208"]["windows"]
    clean = nk.ecg_clean(x, sampling_rate=fs)
    peaks = {m: np.asarray(nk.ecg_peaks(clean if m == "neurokit" else x, sampling_rate=fs,
                                        method=m)[1]["ECG_R_Peaks"], np.int64) for m in METHODS}
    peaks["sleepecg"] = np.asarray(sleepecg.detect_heartbeats(x, fs), np.int64)
    unanimous, model_ok, median_ok = 0, 0, 0
    nkp = peaks["neurokit"]
    print("| window (s) | model | neurokit | " + " | ".join(peaks) + " | all agree |")
    print("| ---: | --- | --- |" + " ---: |" * len(peaks) + " --- |")
    for k, r in enumerate(rows):
        bpm = {}
        for m, p in peaks.items():
            q = p[(p >= k * win) & (p < (k + 1) * win)]
            bpm[m] = 60 * fs / np.diff(q).mean() if len(q) >= 2 else 0.0
        bands = {rate_band(v) for v in bpm.values()}
        agree = len(bands) == 1
        unanimous += agree
        model_ok += agree and r["model_band"] == next(iter(bands))
        rr = np.diff(nkp[(nkp >= k * win) & (nkp < (k + 1) * win)])
        median_ok += r["model_band"] == rate_band(60 * fs / np.median(rr))
        print(f"| {10 * k} | {r['model_band']} | {r['detector_band']} | "
              + " | ".join(f"{v:.1f}" for v in bpm.values()) + f" | {'yes' if agree else ''} |")
    print(f"\nwindows where all {len(peaks)} detectors agree on the band: {unanimous} of "
          f"{len(rows)}; the model's band matches them in {model_ok}")
    print(f"the model's band against neurokit's band of the median RR (the typical beat-to-beat "
          f"interval, where the check uses the mean): {median_ok} of {len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
