"""Keyword clips mixed per batch (model/data/online_mix.py) against the prepared ones (kws_mix)."""

import numpy as np
import pytest
import torch

pytest.importorskip("pyroomacoustics")

from model.data import kws_mix  # noqa: E402
from model.data.kws import CLASSES, KEYWORDS  # noqa: E402
from model.data.online_mix import MixedAndFixed, OnlineMixer  # noqa: E402

SILENCE = CLASSES.index("silence")


def _freq(label: int, engine: int) -> float:
    return 300.0 + 60.0 * label + 20.0 * engine


def _rows(engine: str, e: int) -> list[dict]:
    """Two renditions of every keyword and of two unknown words: a tone per class and engine,
    so a clip's frequency tells which utterance it holds."""
    rng = np.random.default_rng(e)
    rows = []
    for k, text in enumerate((*KEYWORDS, "bed", "cat")):
        label = min(k, 10)
        for _ in range(2):
            n = int(rng.integers(5000, 9000))
            tone = np.sin(2 * np.pi * _freq(label, e) * np.arange(n) / 16000) * np.hanning(n)
            rows.append(dict(engine=engine, split="train", text=text, voice="v",
                             kind="keyword" if k < 10 else "unknown", wav=tone.astype(np.float32)))
    return rows


BY_ENGINE = {"flite": _rows("flite", 0), "festival": _rows("festival", 1)}


def _mixer(**kw) -> OnlineMixer:
    kw = dict(n_per_epoch=240, seed=3, n_rooms=8, stats_clips=24, workers=1) | kw
    return OnlineMixer(BY_ENGINE, **kw)


def test_batches_are_balanced_fresh_and_deterministic():
    a, b = _mixer(), _mixer()
    idx = torch.arange(48)
    x1, lengths, y1 = a.batch(idx)
    x2, _, y2 = a.batch(idx)
    x3, _, _ = b.batch(idx)
    assert lengths is None and x1.shape == (48, 16000, 1) and len(a) == 240
    assert torch.equal(y1, idx % 12) and torch.equal(y2, y1)
    assert not torch.equal(x1, x2)  # the same indices: new clips
    assert torch.equal(x1, x3)  # the same seed: the same clips
    x = x1[..., 0].double()
    speech, quiet = x[y1 != SILENCE], x[y1 == SILENCE]
    peaks = speech.abs().amax(1)
    assert (peaks >= 10 ** (-26 / 20) - 1e-6).all() and (peaks <= 10 ** (-1 / 20) + 1e-6).all()
    assert quiet.pow(2).mean(1).sqrt().max() < 10 ** (-40 / 20) * 1.5  # silence up to -40 dBFS
    assert a.x.shape == (24, 16000, 1) and torch.equal(a.y, torch.arange(24) % 12)


def test_each_clip_holds_its_class_word_of_its_engine_speed_perturbed():
    """No noise, no room: a keyword clip is its class's tone of its engine, 0.85-1.15 times the
    frequency (speed perturbation), whole, and placed inside the window."""
    m = _mixer(noise=(0.0, 0.0, 0.0), room_prob=0.0)
    idx = torch.arange(240)
    x, _, y = m.batch(idx)
    x = x[..., 0].double().numpy()
    freqs = np.fft.rfftfreq(16000, 1 / 16000)
    for i in np.flatnonzero(y.numpy() != SILENCE):
        engine = (i // 12) % 2
        peak = freqs[np.abs(np.fft.rfft(x[i])).argmax()]
        f = _freq(int(y[i]), engine)
        assert 0.85 * f - 2 <= peak <= 1.15 * f + 2, (i, peak, f)
        support = np.flatnonzero(np.abs(x[i]) > 1e-9)
        span = support[-1] - support[0] + 1
        assert 5000 / 1.15 - 2 <= span <= 9000 / 0.85 + 2


def test_rooms_and_noise_follow_their_settings():
    """Every clip in a room: reverberant tails lengthen the words; noise at a fixed SNR: the
    noise floor outside the word sits that far below the word's power."""
    wet = _mixer(noise=(0.0, 0.0, 0.0), room_prob=1.0).batch(torch.arange(120))
    dry = _mixer(noise=(0.0, 0.0, 0.0), room_prob=0.0).batch(torch.arange(120))
    speaking = dry[2] != SILENCE

    def occupied(batch):
        return (batch[0][..., 0].abs() > 1e-9).double().mean(1)[speaking]

    assert occupied(wet).mean() > occupied(dry).mean() + 0.05  # tails of 0.1-0.3 s
    snr_db = 20.0
    m = _mixer(noise=(snr_db, snr_db, 1.0), room_prob=0.0)
    clean = _mixer(noise=(snr_db, snr_db, 0.0), room_prob=0.0)
    idx = torch.arange(240)
    (xn, _, y), (xc, _, _) = m.batch(idx), clean.batch(idx)  # the same draws but the noise
    ratios = []
    for i in np.flatnonzero(y.numpy() != SILENCE):
        word = xc[i, :, 0].abs() > 1e-9
        inside = xn[i, word, 0].double().pow(2).mean()
        outside = xn[i, ~word, 0].double().pow(2).mean()
        ratios.append(float(inside / outside))
    # inside: speech + noise power, outside: noise alone; 1 + 10^(SNR/10) = 101 for a steady
    # background (babble is not steady: the median over kinds)
    assert 40 < np.median(ratios) < 250


def test_matches_the_prepared_clips_distribution():
    """The same rows through kws_mix.make_clips (one clip per seed, drawn once) and through the
    mixer: level, how much of the window is sound and the noise's high-band share agree."""
    rows = BY_ENGINE["flite"]
    xp, yp = kws_mix.make_clips(rows, 600, seed=5, workers=2)
    m = OnlineMixer({"flite": rows}, 600, seed=5, n_rooms=32, stats_clips=12, workers=2)
    xo, _, yo = m.batch(torch.arange(600))
    xo, yo = xo[..., 0].double().numpy(), yo.numpy()

    def stats(x, y):
        s = x[y != SILENCE].astype(np.float64)
        rms_db = 20 * np.log10(np.sqrt((s**2).mean(1)))
        power = np.abs(np.fft.rfft(s, axis=1)) ** 2
        return dict(rms_db=np.median(rms_db), rms_spread=np.subtract(*np.percentile(rms_db, [75, 25])),
                    silent=(np.abs(s) < 1e-7).mean(),
                    high=np.median(power[:, 4000:].sum(1) / power.sum(1)))

    p, o = stats(xp, yp), stats(xo, yo)
    assert abs(p["rms_db"] - o["rms_db"]) < 2.0, (p, o)
    assert abs(p["rms_spread"] - o["rms_spread"]) < 2.5, (p, o)
    assert abs(p["silent"] - o["silent"]) < 0.05, (p, o)
    assert abs(p["high"] - o["high"]) < 0.05, (p, o)


def test_refit_joins_the_fixed_clips():
    m = _mixer()
    fixed_x = torch.randn(10, 16000, 1)
    from model.train import Split

    joined = m.concat(Split(fixed_x, None, torch.arange(10)))
    assert isinstance(joined, MixedAndFixed) and len(joined) == 250
    idx = torch.tensor([3, 245, 0, 240])
    x, _, y = joined.batch(idx)
    assert torch.equal(x[1], fixed_x[5]) and torch.equal(x[3], fixed_x[0])
    assert y.tolist() == [3, 5, 0, 0]


def test_trains_a_network_from_the_mixer(tmp_path):
    """model.train.train takes the mixer as its training split (statistics from its sample,
    refit with validation clips joining) and writes a checkpoint."""
    from model.tasks import PRESETS
    from model.train import make_split, train

    m = _mixer(n_per_epoch=48)
    val = make_split(m.x.numpy()[:, :, 0], m.y.numpy())
    preset = PRESETS["kws"].with_overrides(
        epochs=1, batch_size=16, d_model=8, d_state=4, n_layers=1, n_train=48, n_val=24,
        n_test=24, shift_augment=0, front_end="logmel", refit_on_val=True)
    metrics = train(preset, tmp_path / "run", data={"train": m, "val": val, "test": val},
                    progress=False, log=lambda *a: None)
    assert metrics["epochs_completed"] == 1 and (tmp_path / "run" / "model.safetensors").exists()
