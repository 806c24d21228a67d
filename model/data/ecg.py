"""Synthetic single-lead ECG rhythm windows (10 s at 250 Hz, 5 classes).

Labels come from the generator parameters, not from annotation, so they are exact by
construction. How each class is made:

- brady / normal / tachy: `neurokit2.ecg_simulate` (ECGSYN, McSharry et al. 2003) with the
  heart rate drawn from 40-55 / 60-95 / 105-160 bpm (kept slightly inside the bounds so
  the realised rate, which ECGSYN modulates with its LF/HF RR process, stays in range),
  and jittered P-Q-R-S-T angles, amplitudes and widths.
- wide_qrs: the same ECGSYN call at a normal rate with the Q and S angles pushed away
  from R and the Q/R/S Gaussian widths multiplied by 2.8-3.6, which gives a QRS of roughly
  120-180 ms instead of ~80 ms (a bundle-branch-block-like morphology, not a specific one).
- af_like: ECGSYN cannot take an RR series or drop the P wave from its RR process, so
  the same ECGSYN ODE is integrated here with independent log-normal RR intervals
  (coefficient of variation ~0.15-0.3, "irregularly irregular"), P amplitude 0, and
  low-amplitude 4-9 Hz fibrillatory waves added to the baseline.

Realistic noise is added with `neurokit2.signal_distort`: baseline wander (0.15-0.5 Hz),
mid-band and 25 Hz muscle-like noise, 50/60 Hz powerline and short artefact bursts.
Splits use disjoint seed streams: window i of split s and seed k is drawn from
`SeedSequence([SPLIT_CODE[s], k, i])`, so no window can occur in two splits.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
from scipy.integrate import solve_ivp

CLASSES = ("brady", "normal", "tachy", "af_like", "wide_qrs")
SAMPLE_RATE = 250
WINDOW = 10 * SAMPLE_RATE
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
HR_RANGE = {"brady": (40, 55), "normal": (60, 95), "tachy": (105, 160), "wide_qrs": (60, 95)}
_HR_DRAW = {"brady": (42, 53), "normal": (63, 92), "tachy": (110, 155), "wide_qrs": (63, 90)}
_WARMUP = 2 * SAMPLE_RATE  # ECGSYN's first beat is a transient; drop it
# ECGSYN defaults for (P, Q, R, S, T): angle in degrees, amplitude, Gaussian width.
_TI = np.array([-70.0, -15.0, 0.0, 15.0, 100.0])
_AI = np.array([1.2, -5.0, 30.0, -7.5, 0.75])
_BI = np.array([0.25, 0.1, 0.1, 0.1, 0.4])


def _morphology(rng: np.random.Generator, label: str) -> dict:
    """Jittered ECGSYN wave parameters so beats differ between windows."""
    ti = _TI + rng.uniform(-3, 3, 5) * np.array([1, 0.3, 0, 0.3, 1])
    ai = _AI * rng.uniform(0.8, 1.2, 5)
    bi = _BI * rng.uniform(0.9, 1.1, 5)
    if label == "wide_qrs":
        ti[1] = -rng.uniform(32, 40)
        ti[3] = rng.uniform(34, 44)
        bi[1:4] *= rng.uniform(2.8, 3.6)
        ai[2] *= rng.uniform(0.5, 0.8)
        ai[4] *= -rng.uniform(0.5, 1.5)  # discordant T wave, typical of wide QRS
    if label == "af_like":
        ai[0] = 0.0
    return {"ti": tuple(ti), "ai": tuple(ai), "bi": tuple(bi)}


def _ecgsyn_rr(rr_intervals: np.ndarray, hrmean: float, ti, ai, bi, sfint: int) -> np.ndarray:
    """Integrate the ECGSYN ODE (same equations and scaling as neurokit2) for a given RR list."""
    ti = np.asarray(ti) * np.pi / 180
    hrfact = np.sqrt(hrmean / 60)
    bi = np.asarray(bi) * hrfact
    ti = np.array([np.sqrt(hrfact), hrfact, 1, hrfact, np.sqrt(hrfact)]) * ti
    ai = np.asarray(ai)
    rr = np.repeat(rr_intervals, np.round(rr_intervals * sfint).astype(int))
    dt = 1 / sfint

    def derivs(t, x):
        ta = np.arctan2(x[1], x[0])
        a0 = 1.0 - np.sqrt(x[0] ** 2 + x[1] ** 2)
        w0 = 2 * np.pi / rr[min(int(t * sfint), len(rr) - 1)]
        zbase = 0.005 * np.sin(2 * np.pi * 0.25 * t)
        dti = (ta - ti) - np.round((ta - ti) / 2 / np.pi) * 2 * np.pi
        dz = -np.sum(ai * dti * np.exp(-0.5 * (dti / bi) ** 2)) - (x[2] - zbase)
        return np.array([a0 * x[0] - w0 * x[1], a0 * x[1] + w0 * x[0], dz])

    t_eval = np.arange(len(rr)) * dt
    sol = solve_ivp(derivs, [0, t_eval[-1]], np.array([1.0, 0.0, 0.04]), t_eval=t_eval)
    z = sol.y[2]
    return (z - z.min()) * 1.6 / (z.max() - z.min()) - 0.4


def _clean_window(rng: np.random.Generator, label: str) -> np.ndarray:
    """One noise-free 10 s window of the given class."""
    import neurokit2 as nk

    morph = _morphology(rng, label)
    if label == "af_like":
        hr = rng.uniform(75, 140)
        cv = rng.uniform(0.15, 0.3)
        rr = (60 / hr) * np.exp(rng.normal(-cv**2 / 2, cv, 64))
        rr = np.clip(rr, 0.28, 1.8)
        rr = rr[: np.searchsorted(np.cumsum(rr), 13.0) + 1]
        ecg = _ecgsyn_rr(rr, 60 / rr.mean(), sfint=SAMPLE_RATE, **morph)
        t = np.arange(len(ecg)) / SAMPLE_RATE
        for _ in range(2):  # fibrillatory waves replace the absent P waves
            f = rng.uniform(4, 9)
            env = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 6.3))
            ecg += rng.uniform(0.01, 0.03) * env * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
    else:
        hr = rng.uniform(*_HR_DRAW[label])
        ecg = nk.ecg_simulate(
            duration=(WINDOW + _WARMUP) / SAMPLE_RATE,
            sampling_rate=SAMPLE_RATE,
            noise=0,
            heart_rate=hr,
            heart_rate_std=rng.uniform(0.5, 2.0),
            lfhfratio=rng.uniform(0.3, 2.0),
            random_state=int(rng.integers(2**31)),
            **morph,
        )
    return np.asarray(ecg[_WARMUP : _WARMUP + WINDOW], dtype=np.float64)


def _distort(rng: np.random.Generator, ecg: np.ndarray) -> np.ndarray:
    """Baseline wander, muscle noise, powerline and artefact bursts (neurokit2)."""
    import neurokit2 as nk

    n_art = int(rng.integers(0, 5))
    return nk.signal_distort(
        ecg,
        sampling_rate=SAMPLE_RATE,
        noise_shape="laplace",
        noise_amplitude=[rng.uniform(0.05, 0.3), rng.uniform(0.0, 0.04), rng.uniform(0.0, 0.06)],
        noise_frequency=[rng.uniform(0.15, 0.5), rng.uniform(3, 8), 25],
        powerline_amplitude=rng.uniform(0.0, 0.08),
        powerline_frequency=int(rng.choice([50, 60])),
        artifacts_amplitude=rng.uniform(0.1, 0.4) if n_art else 0.0,
        artifacts_frequency=20,
        artifacts_number=max(n_art, 1),
        random_state=int(rng.integers(2**31)),
        silent=True,
    )


def _window(args: tuple[int, int, int, int, bool]) -> np.ndarray:
    code, seed, i, label, noise = args
    sig_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence([code, seed, i]).spawn(2))
    ecg = _clean_window(sig_rng, CLASSES[label])
    if noise:
        ecg = _distort(noise_rng, ecg)
    return ecg.astype(np.float32)


def labels_for(n: int, seed: int, code: int) -> np.ndarray:
    """Balanced labels (n // 5 or n // 5 + 1 per class) in a seeded random order."""
    y = np.arange(n) % len(CLASSES)
    return np.random.default_rng([code, seed, 1 << 30]).permutation(y).astype(np.int64)


def generate(
    split: str, n: int, seed: int, noise: bool = True, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return x float32 [n, 2500] and y int64 [n]; identical for identical arguments.

    `noise=False` gives the exact clean signals underneath the noisy ones (used by tests
    to check labels). Large requests are spread over processes; results do not depend
    on the number of workers because every window has its own seed.
    """
    code = SPLIT_CODE[split]
    y = labels_for(n, seed, code)
    jobs = [(code, seed, i, int(y[i]), noise) for i in range(n)]
    workers = workers or min(os.cpu_count() or 1, 16)
    if workers > 1 and n >= 64:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            rows = list(pool.map(_window, jobs, chunksize=max(1, n // (workers * 8))))
    else:
        rows = [_window(j) for j in jobs]
    x = np.stack(rows) if rows else np.zeros((0, WINDOW), np.float32)
    return x, y


def load(split: str, n: int, seed: int, cache_dir: str = ".cache/data") -> tuple[np.ndarray, np.ndarray]:
    """`generate` with an on-disk .npz cache."""
    from .cache import cached

    return cached("ecg", split, n, seed, lambda: generate(split, n, seed), cache_dir, version="1")
