"""Voice perturbation (model/data/voice.py) and where training uses it: formants move in the
direction asked, the pitch stays, alpha = 1 changes nothing, and the augmented sets keep every
other random draw (so held-out sets stay bit-identical)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from model.data.voice import cepstral_warp, random_alpha, shift_formants

SR = 16000


def _vowel(f0: float = 120.0, formants=((500, 80), (1500, 90), (2500, 100)), n: int = SR):
    """A pulse train at f0 through second-order resonators: a synthetic vowel (float64)."""
    x = np.zeros(n)
    x[:: int(round(SR / f0))] = 1.0
    for f, bw in formants:
        r, th = math.exp(-math.pi * bw / SR), 2 * math.pi * f / SR
        x = lfilter([1.0], [1.0, -2 * r * math.cos(th), r * r], x)
    return x / np.abs(x).max()


def _centroid(y: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(y[4000:12000] * np.hanning(8000))) ** 2
    freqs = np.fft.rfftfreq(8000, 1 / SR)
    return float((freqs * spec).sum() / spec.sum())


def _f0(y: np.ndarray) -> float:
    seg = y[4000:8000]
    ac = np.correlate(seg, seg, "full")[len(seg) - 1 :]
    lag = 60 + int(np.argmax(ac[60:400]))  # 40-267 Hz
    return SR / lag


def test_alpha_one_returns_the_input_and_length_is_kept():
    x = torch.from_numpy(_vowel())[None]
    y = shift_formants(x, torch.tensor([1.0]))
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, rtol=0, atol=1e-9)
    short = torch.randn(2, 100, dtype=torch.float64)  # shorter than one frame: unchanged
    torch.testing.assert_close(shift_formants(short, torch.tensor([1.2, 0.8])), short)


@pytest.mark.parametrize("alpha", [0.85, 1.2])
def test_formants_move_with_alpha_and_the_pitch_stays(alpha):
    x = _vowel()
    y = shift_formants(torch.from_numpy(x)[None], torch.tensor([alpha]))[0].numpy()
    ratio = _centroid(y) / _centroid(x)
    assert abs(math.log(ratio)) > 0.5 * abs(math.log(alpha))  # moved, and the right way
    assert (ratio > 1) == (alpha > 1)
    assert _f0(y) == pytest.approx(_f0(x), rel=0.02)  # harmonics stay where they were
    assert np.abs(y).max() == pytest.approx(np.abs(x).max())  # the peak level is kept


def test_random_alpha_is_log_uniform_in_range():
    a = random_alpha(torch.Generator().manual_seed(0), 4000, 0.8, 1.25)
    assert a.min() >= 0.8 and a.max() <= 1.25
    assert abs(float(torch.log(a).mean())) < 0.01  # symmetric in log: up as likely as down


def test_cepstral_warp_moves_a_log_mel_peak():
    """float64 reference: a log-mel spectrum with one peak, through DCT-II (13 coefficients),
    warped by T(alpha), read back: the peak moves to about alpha times its frequency."""
    n_bands, f_max = 40, 4000.0
    torch.testing.assert_close(cepstral_warp(torch.tensor([1.0]), 13)[0], torch.eye(13),
                               rtol=0, atol=1e-6)
    mel_max = 2595 * math.log10(1 + f_max / 700)
    j = np.arange(n_bands)
    centre_mel = (j + 0.5) / n_bands * mel_max
    centre_hz = 700 * (10 ** (centre_mel / 2595) - 1)
    peak_hz = 1000.0
    peak_mel = 2595 * math.log10(1 + peak_hz / 700)
    log_mel = np.exp(-0.5 * ((centre_mel - peak_mel) / 150.0) ** 2)
    k = np.arange(13)[:, None]
    dct = np.cos(np.pi * k * (j + 0.5) / n_bands) * np.sqrt(2 / n_bands)
    dct[0] /= np.sqrt(2)
    c = dct @ log_mel
    for alpha in (0.85, 1.2):
        t = cepstral_warp(torch.tensor([alpha]), 13, n_bands, f_max)[0].double().numpy()
        back = dct.T @ (t @ c)
        assert centre_hz[np.argmax(back)] == pytest.approx(alpha * peak_hz, rel=0.08)


def test_training_augment_applies_the_cepstral_warp():
    from model.tasks import PRESETS
    from model.train import augment

    preset = PRESETS["fsdd"].with_overrides(offset_augment=0, scale_augment=0, noise_augment=0,
                                            stretch_augment=0, cepstral_warp=1.2)
    from model.config import ModelConfig
    from model.network import S4DNetwork

    net = S4DNetwork(ModelConfig(d_input=13, d_output=10, d_model=8, d_state=4, n_layers=1))
    x = torch.randn(4, 20, 13)
    y, lengths = augment(x, torch.full((4,), 20), preset, net, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and lengths.tolist() == [20] * 4
    assert not torch.allclose(y, x)  # warped
    off = augment(x, torch.full((4,), 20), preset.with_overrides(cepstral_warp=0.0), net,
                  torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(off, x)


def test_formant_clips_keep_every_other_draw():
    """kws_mix with formants=(1, 1) (alpha always 1) gives the clips of formants=None: the
    shift draws from its own random stream, so the held-out sets (made without it) and the
    placement, noise and gain of training clips do not move."""
    from model.data import kws_mix

    rng = np.random.default_rng(0)
    rows = []
    for k, text in enumerate(["yes", "no", "up", "down", "left", "right", "on", "off", "stop",
                              "go", "bed"]):
        n = 6000
        tone = np.sin(2 * np.pi * (200 + 50 * k) * np.arange(n) / SR) * np.hanning(n)
        rows.append(dict(engine="flite", split="train", kind="keyword" if k < 10 else "unknown",
                         text=text, voice="kal",
                         wav=(tone + 0.01 * rng.standard_normal(n)).astype(np.float32)))
    x0, y0 = kws_mix.make_clips(rows, 24, seed=3, workers=1)
    x1, y1 = kws_mix.make_clips(rows, 24, seed=3, workers=1, formants=(1.0, 1.0))
    assert np.array_equal(y0, y1)
    np.testing.assert_allclose(x1, x0, atol=1e-6)
    x2, y2 = kws_mix.make_clips(rows, 24, seed=3, workers=2, chunk=8, formants=(0.8, 1.25))
    assert np.array_equal(y2, y0) and np.abs(x2 - x0).max() > 0.01
    x3, _ = kws_mix.make_clips(rows, 24, seed=3, workers=1, chunk=8, formants=(0.8, 1.25))
    assert np.array_equal(x2, x3)  # deterministic, whatever the worker count


def test_word_bank_with_voices_adds_shifted_copies():
    from model.data.streams import WordBank

    rng = np.random.default_rng(1)
    lengths = np.array([3000, 5000, 4000])
    audio = (rng.standard_normal(lengths.sum()) * 8000).astype(np.int16)
    bank = WordBank(audio, lengths, np.array([0, 10, 3]))
    more = bank.with_voices(2, 0.85, 1.2, torch.Generator().manual_seed(0))
    assert more.audio.shape == (9, 5000)
    assert more.labels.tolist() == [0, 10, 3] * 3 and more.lengths.tolist() == lengths.tolist() * 3
    torch.testing.assert_close(more.audio[:3], bank.audio)  # the originals first
    assert more.keyword_idx.tolist() == [0, 2, 3, 5, 6, 8] and more.other_idx.tolist() == [1, 4, 7]
    for i, n in enumerate(lengths.tolist() * 3):
        assert float(more.audio[i, n:].abs().sum()) == 0.0  # nothing past the word
    assert not torch.allclose(more.audio[3:6], bank.audio)
