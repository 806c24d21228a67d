"""Long-stream training pieces: the prediction after every prefix (training target and the
batch path of events), the stream composers and their per-step targets, the vectorised
detector and the stream metrics, the backends' frame outputs."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.data import streams as S
from model.events import DetectorSettings, detect, frame_ends
from model.network import S4DNetwork
from model.stream_metrics import detect_frames, detect_many, ecg_summary, kws_summary
from model.streaming import StreamingNetwork

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pooling", ["mean", "ema", "last", "none"])
def test_prefix_logits_equal_forward_on_every_prefix_and_the_stream(pooling):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, d_state=8, n_layers=2, d_output=5, patch_size=4,
                      pooling=pooling, ema_tau_s=0.01, sample_rate=8000)
    net = S4DNetwork(cfg, seed=1).eval()
    x = torch.randn(2, 400, 1)
    with torch.no_grad():
        pl = net.prefix_logits(x)
        for steps in (1, 7, 31, 100):
            ref = net(x[:, : steps * 4])
            ref = ref[:, -1] if pooling == "none" else ref
            assert torch.allclose(pl[:, steps - 1], ref, atol=2e-5), steps
        sn = StreamingNetwork(net, 40)
        state = sn.zero_state(2)
        for i in range(10):
            lg, state = sn.step(x[:, i * 40:(i + 1) * 40], state)
            lg = lg[:, -1] if pooling == "none" else lg
            assert torch.allclose(lg, pl[:, (i + 1) * 10 - 1], atol=2e-5)


def test_prefix_logits_respect_lengths_and_train():
    cfg = ModelConfig(d_model=8, d_state=4, n_layers=1, d_output=3, pooling="ema",
                      ema_tau_s=0.02, sample_rate=1000)
    net = S4DNetwork(cfg, seed=2)
    x = torch.randn(2, 50, 1)
    out = net.prefix_logits(x, torch.tensor([50, 20]))
    with torch.no_grad():
        alone = net.prefix_logits(x[1:, :20])
    assert torch.allclose(out[1, :20], alone[0], atol=1e-5)
    out.sum().backward()  # differentiable: it is the training loss's input
    assert net.encoder.weight.grad is not None


def word_bank(n_kw=20, n_other=10, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3000, 7000, n_kw + n_other)
    audio = (rng.standard_normal(int(lengths.sum())) * 8000).astype(np.int16)
    labels = np.array([i % 10 for i in range(n_kw)] + [S.UNKNOWN] * n_other)
    return S.WordBank(audio, lengths, labels)


def test_kws_streams_targets_follow_the_words():
    bank = word_bank()
    gen = torch.Generator().manual_seed(0)
    x, y, words = S.kws_streams(bank, None, 3, 12.0, gen, keyword_prob=0.6, patch=16)
    assert x.shape == (3, 192000) and y.shape == (3, 12000)
    assert float(x.abs().max()) <= 1.0 and torch.isfinite(x).all()
    for b in range(3):
        assert words[b], "a 12 s stream has words"
        prev_end = 0
        for w in words[b]:
            assert prev_end <= w.start < w.end <= 192000
            prev_end = w.end
            mid = (w.start + w.end) // 2 // 16
            assert y[b, mid] == S.UNKNOWN or (y[b, mid] < 10)  # spoken: unknown (or a hold)
            after = w.end // 16 + 5  # just after the end: the keyword itself, or unknown
            if after < 12000 and w.label < 10:
                assert y[b, after] == w.label
        gap = [t for t in range(12000) if all(not (w.start <= 16 * (t + 1) <= w.end + 16000)
                                              for w in words[b])]
        assert all(y[b, t] == S.SILENCE for t in gap)
    _, y0, words0 = S.kws_streams(bank, None, 2, 10.0, gen, keyword_prob=0.0)
    assert all(w.label == S.UNKNOWN for ws in words0 for w in ws)
    assert not (y0 < 10).any()


def test_kws_stream_conditions_leave_the_streams_as_they_are():
    """`conditions=True` reports each stream's draw (for metrics by condition) and changes
    none of the draws: audio, targets and words are identical."""
    bank = word_bank()
    rirs = torch.zeros(3, 400)
    rirs[:, 0] = 1.0  # a dry "room": the flag is what is checked
    plain = S.kws_streams(bank, rirs, 16, 4.0, torch.Generator().manual_seed(5), room_prob=0.5)
    x, y, words, cond = S.kws_streams(bank, rirs, 16, 4.0, torch.Generator().manual_seed(5),
                                      room_prob=0.5, conditions=True)
    assert torch.equal(x, plain[0]) and torch.equal(y, plain[1]) and words == plain[2]
    assert len(cond.noise) == len(cond.snr_db) == len(cond.room) == 16
    assert any(cond.room) and not all(cond.room)
    assert set(cond.noise) <= set(range(len(S.NOISE_KINDS))) and len(set(cond.noise)) > 1
    for kind, snr in zip(cond.noise, cond.snr_db, strict=True):
        name = S.NOISE_KINDS[kind]
        if name == "quiet":
            assert np.isnan(snr)
        else:  # babble sits 6-30 dB below the speech, white / pink 0-30 dB
            assert (6.0 if name == "babble" else 0.0) - 1e-3 <= snr <= 30.0 + 1e-3


def test_ecg_streams_change_rhythm_and_ignore_the_settling_seconds():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 5
    x = (rng.standard_normal((40, 2500)) + y[:, None]).astype(np.float32)  # class = offset
    bank = S.EcgBank(x, y)
    gen = torch.Generator().manual_seed(3)
    sig, tgt, segs = S.ecg_streams(bank, 2, 300.0, gen, segment_s=(30.0, 60.0), patch=5)
    assert sig.shape == (2, 75000) and tgt.shape == (2, 15000)
    for b in range(2):
        assert len(segs[b]) >= 4 and segs[b][0].start == 0 and segs[b][-1].end == 75000
        for a, c in zip(segs[b], segs[b][1:], strict=False):
            assert a.end == c.start and a.label != c.label
        for s in segs[b]:
            lo, hi = s.start // 5, s.end // 5
            assert (tgt[b, lo:lo + 99] == S.IGNORE).all()  # 2 s = 100 steps not scored
            assert (tgt[b, lo + 101:hi] == s.label).all()
            inner = sig[b, s.start + 600:s.end - 600]
            assert abs(float(inner.mean()) - s.label) < 0.5  # the windows are of that rhythm


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_detector_equals_the_detector(seed):
    rng = np.random.default_rng(seed)
    f, k = 400, 4
    probs = np.clip(np.cumsum(rng.normal(0, 0.15, (f, k)), 0) % 1.0, 0, 1).astype(np.float32)
    offsets = np.arange(1, f + 1) * 20
    names = ["a", "b", "c", "bg"]
    def by_onset(events):  # the stream raises an event when the label turns on, which with
        return sorted(events, key=lambda e: (e["offset"], names.index(e["label"])))  # min_on
        # comes after its onset: compare in onset order

    cases = [(0.5, 0.1, 0, 0, 0), (0.7, 0.3, 200, 0, 0), (0.4, 0.0, 1000, 0, 0),
             (0.5, 0.1, 0, 60, 0), (0.6, 0.2, 300, 100, 0), (0.4, 0.0, 0, 20, 0),
             (0.5, 0.1, 0, 0, 70), (0.6, 0.2, 300, 100, 45),
             (0.4, 0.0, 0, 20, 5000)]  # lag > a stream: all clamp
    suppressed = 0
    for (on, hyst, hold, min_on, lag), changes_only in itertools.product(cases, (False, True)):
        st = DetectorSettings(on, on - hyst, hold, (0, 1, 2), min_on, lag,
                              changes_only=changes_only)
        streamed = by_onset(detect(names, st, offsets, probs))
        assert detect_frames(probs, offsets, st, names) == streamed
        assert len(streamed) > 0
        parts = [(probs[:150], offsets[:150]), (probs[150:], offsets[150:] - 3000),
                 (probs[:1], offsets[:1])]
        assert detect_many(parts, st, names) == [by_onset(detect(names, st, o, p))
                                                 for p, o in parts]
        if changes_only:  # never two events of one label in a row
            in_order = [e["label"] for e in detect(names, st, offsets, probs)]
            assert all(a != b for a, b in zip(in_order, in_order[1:]))
            every = detect(names, dataclasses.replace(st, changes_only=False), offsets, probs)
            suppressed += len(every) - len(streamed)
    assert suppressed > 0  # the cases hold repeats that changes_only drops


def test_min_on_ignores_blips_and_reports_the_onset():
    """min_on: a run of p >= threshold shorter than min_on raises nothing; a longer one turns
    the label on at the frame that completes min_on and reports the onset frame's offset and
    probability; min_on = 0 is the plain detector."""
    from model.events import EventDetector

    names = ["yes", "silence"]
    p_yes = [0.1, 0.9, 0.95, 0.2, 0.1, 0.85, 0.9, 0.97, 0.99, 0.3, 0.1]
    offsets = [320 * (i + 1) for i in range(len(p_yes))]
    probs = [[p, 1 - p] for p in p_yes]
    st = DetectorSettings(0.8, 0.6, 0, (0,), min_on_samples=640)  # three frames in a row
    det = EventDetector(names, st)
    raised = [(off, det.update(off, pr)) for off, pr in zip(offsets, probs, strict=True)]
    fired = [(off, ev) for off, evs in raised for ev in evs]
    assert fired == [(offsets[7], {"label": "yes", "offset": offsets[5], "probability": 0.85})]
    plain = detect(names, DetectorSettings(0.8, 0.6, 0, (0,)), offsets, probs)
    assert [e["offset"] for e in plain] == [offsets[1], offsets[5]]
    det.update(offsets[-1] + 320, [0.9, 0.1])  # a pending onset is dropped by reset
    det.reset()
    assert det.onset == {} and not det.on.any()


def test_kws_and_ecg_metrics_count_by_hand():
    names = ["yes", "no", "unknown", "silence"]
    W = SimpleNamespace
    words = [W(start=1000, end=5000, label=0), W(start=20000, end=24000, label=1),
             W(start=40000, end=43000, label=2)]
    events = [{"label": "yes", "offset": 5320}, {"label": "yes", "offset": 30000},
              {"label": "no", "offset": 60000}]
    m = kws_summary([(events, words)], [[{"label": "no", "offset": 1}]], 1800.0, 3600.0,
                    names, 16000)
    assert m["keywords"] == 2 and m["detected"] == 1 and m["false_rejection_rate"] == 0.5
    assert m["false_alarms_per_hour"] == 2.0 and m["onset_error_p90_ms"] == 20.0
    assert m["unmatched_events_per_hour_on_keyword_streams"] == 2.0
    names = ["brady", "normal", "tachy"]
    segs = [W(start=0, end=25000, label=1), W(start=25000, end=50000, label=2),
            W(start=50000, end=90000, label=1)]
    events = [{"label": "normal", "offset": 1000}, {"label": "tachy", "offset": 27500},
              {"label": "brady", "offset": 30000}, {"label": "normal", "offset": 70000}]
    m = ecg_summary([(events, segs)], 3600.0, names, 250)
    assert m["changes"] == 2 and m["detected"] == 1 and m["delay_median_s"] == 10.0
    assert m["false_changes"] == 1  # brady; the late normal is a (late) true report


def test_backend_frame_outputs_equal_the_stepping_default(tmp_path):
    from model.checkpoint import save_checkpoint
    from model.config import CheckpointConfig, TaskConfig
    from server.backends.base import Backend
    from server.backends.torch_backend import TorchBackend

    cfg = ModelConfig(d_model=8, d_state=4, n_layers=2, d_output=3, patch_size=2,
                      pooling="ema", ema_tau_s=0.05, sample_rate=1000)
    ck = CheckpointConfig(model=cfg, task=TaskConfig(sample_rate=1000, frame_size=32,
                                                     class_names=["a", "b", "c"]))
    save_checkpoint(tmp_path / "m", S4DNetwork(cfg, seed=3), ck)
    be = TorchBackend.load(tmp_path / "m", "cpu")
    rng = np.random.default_rng(0)
    lengths = np.array([301, 64, 5])
    batch = np.zeros((3, 301, 1), np.float32)
    for i, n in enumerate(lengths):
        batch[i, :n] = rng.standard_normal((n, 1))
    fast = be.predict_frames(batch, lengths)
    slow = Backend.predict_frames(be, batch, lengths)
    final = be.predict(batch, lengths)
    for i, n in enumerate(lengths):
        assert fast[i].shape == (len(frame_ends(int(n), 32, 2)), 3)
        np.testing.assert_allclose(fast[i], slow[i], atol=2e-5)
        np.testing.assert_allclose(fast[i][-1], final[i], atol=2e-5)


def test_init_from_continues_an_earlier_run_in_its_own_architecture(tmp_path):
    """`train_streams --init-from`: a later stage starts from the earlier stage's weights, not
    from the clip model's, keeps the earlier stage's shape when the base was replaced since
    (another width here), and refuses a checkpoint that is not a stream-trained run of it."""
    from model.checkpoint import save_checkpoint
    from model.train_streams import PRESETS, build

    preset = PRESETS["ecg-monitor"]
    fresh, cfg = build(preset, "cpu")
    earlier = {k: v + 0.25 for k, v in fresh.state_dict().items()}
    fresh.load_state_dict(earlier)
    save_checkpoint(tmp_path / "stage1", fresh, cfg)
    again, _ = build(preset, "cpu", init_from=tmp_path / "stage1")
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, earlier[k], rtol=0, atol=0)
    plain, _ = build(preset, "cpu")
    assert any(not torch.equal(v, earlier[k]) for k, v in plain.state_dict().items())
    narrow_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"d_model": 32})})
    narrow = S4DNetwork(narrow_cfg.model, seed=3)
    save_checkpoint(tmp_path / "narrow", narrow, narrow_cfg)
    cont, cont_cfg = build(preset, "cpu", init_from=tmp_path / "narrow")
    assert cont_cfg.model.d_model == 32 and cont_cfg.model.pooling == "ema"
    for k, v in cont.state_dict().items():
        torch.testing.assert_close(v, narrow.state_dict()[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a stream-trained"):
        build(preset, "cpu", init_from=ROOT / "checkpoints" / "ecg-s4d")  # the clip model
    with pytest.raises(ValueError, match="not a stream-trained"):
        build(preset, "cpu", init_from=ROOT / "checkpoints" / "kws-events-s4d")  # another preset


def test_extra_training_words_are_new_words_and_no_keyword():
    """stream_bank's training-only vocabulary: none is a keyword or one of the 30 non-keywords
    that validation and test streams use (those must stay the only ones measured)."""
    from model.data.kws import KEYWORDS, UNKNOWN_WORDS
    from model.data.stream_bank import EXTRA_TRAIN_WORDS

    assert len(set(EXTRA_TRAIN_WORDS)) == len(EXTRA_TRAIN_WORDS) >= 100
    assert not set(EXTRA_TRAIN_WORDS) & (set(KEYWORDS) | set(UNKNOWN_WORDS))


def test_rechoose_keeps_the_weights_and_chooses_on_validation(tmp_path):
    """`train_streams --rechoose`: the event defaults are chosen again over threshold x
    min_on_grid on validation streams (the fewest misses with <= 1 false alarm per hour), the
    weights and the training record stay, and a frame-probability cache gives the same answer."""
    from dataclasses import replace

    from conftest import tiny_stream_bank

    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.stream_eval import score
    from model.train_streams import PRESETS, build, onset_lag, rechoose, smoke

    preset = replace(smoke(PRESETS["kws-events"]), thresholds=(0.3, 0.6, 0.9),
                     min_on_grid=(0.0, 100.0), label_thresholds=True)
    net, cfg = build(preset, "cpu")
    save_checkpoint(tmp_path / "run", net, cfg.model_copy(update={"training": {"steps": 7}}))
    bank = tiny_stream_bank(tmp_path / "bank")
    m = rechoose(preset, tmp_path / "run", bank, tmp_path / "out", "cpu", tmp_path / "cache",
                 log=lambda *a: None)
    again = rechoose(preset, tmp_path / "run", bank, tmp_path / "out2", "cpu", tmp_path / "cache",
                     log=lambda *a: None)
    assert again.keys() == m.keys() and (tmp_path / "cache" / "val.npy").exists()
    assert ((tmp_path / "out" / "metrics.json").read_text()  # (NaN onset errors: as text)
            == (tmp_path / "out2" / "metrics.json").read_text())
    new, new_cfg = load_checkpoint(tmp_path / "out")
    for k, v in net.state_dict().items():
        torch.testing.assert_close(new.state_dict()[k], v, rtol=0, atol=0)
    d = m["detector"]
    assert (new_cfg.task.events.threshold, new_cfg.task.events.min_on_ms) == (
        d["threshold"], d["min_on_ms"])
    assert new_cfg.training["steps"] == 7 and new_cfg.training["min_on_grid"] == [0.0, 100.0]
    # the card states the evaluation sizes the detector was chosen on, not the training run's
    assert new_cfg.training["eval_neg"]["val"] == list(preset.eval_neg["val"])
    assert new_cfg.training["eval_pos"]["val"] == list(preset.eval_pos["val"])
    val = np.load(tmp_path / "cache" / "val.npy", allow_pickle=True)[0]
    rows = [(t, mo, score(preset, new_cfg, val, t, mo))
            for mo in preset.min_on_grid for t in preset.thresholds]
    chosen = next(r[2] for r in rows if r[:2] == (d["threshold"], d["min_on_ms"]))
    if d["label_thresholds"]:  # then validated on its own, at no more false alarms per hour
        assert m["validation_one_threshold"]["false_alarms_per_hour"] == chosen[
            "false_alarms_per_hour"]
    ok = [r for r in rows if r[2]["false_alarms_per_hour"] <= 1.0]
    if ok:  # the choice is made without the onset lag (the lag moves offsets, not decisions)
        assert chosen["false_alarms_per_hour"] <= 1.0
        assert chosen["false_rejection_rate"] == min(r[2]["false_rejection_rate"] for r in ok)
    else:
        assert chosen["false_alarms_per_hour"] == min(r[2]["false_alarms_per_hour"] for r in rows)
    # then per-label thresholds (stored by name), then the lag: validation's median signed
    # onset error at that setting, stored with the model
    names = new_cfg.class_names()
    label_on = {names.index(k): v for k, v in (d["label_thresholds"] or {}).items()}
    assert new_cfg.task.events.label_thresholds == d["label_thresholds"]
    plain = score(preset, new_cfg, val, d["threshold"], d["min_on_ms"], label_on=label_on)
    assert d["onset_lag_ms"] == onset_lag(preset, plain) == new_cfg.task.events.onset_lag_ms
    at_lag = score(preset, new_cfg, val, d["threshold"], d["min_on_ms"], d["onset_lag_ms"],
                   label_on)
    for key in ("false_alarms_per_hour", "keywords", "false_alarms"):
        assert m["validation"][key] == at_lag[key]
    assert ("test_without_onset_lag" in m) == (d["onset_lag_ms"] > 0)
    # the test streams by condition add up to the test numbers at the chosen setting
    cond = m["test_by_condition"]
    assert cond["threshold"] == d["threshold"]
    cells = cond["keyword_streams"]
    assert (cells["all"]["keywords"], cells["all"]["detected"]) == (
        m["test"]["keywords"], m["test"]["detected"])
    assert sum(cells[k]["keywords"] for k in ("dry", "through a room") if k in cells) == (
        m["test"]["keywords"])
    kinds = [k for k in cells if k not in ("all", "dry", "through a room")]
    assert sum(cells[k]["keywords"] for k in kinds) == m["test"]["keywords"]
    per_kw = cond["by_keyword"].values()  # labels match independently: they add up
    assert sum(v["keywords"] for v in per_kw) == m["test"]["keywords"]
    assert sum(v["detected"] for v in per_kw) == m["test"]["detected"]
    # one operating point per environment, chosen on that environment's validation streams
    from model.stream_eval import ENVIRONMENTS, environment
    from model.train_streams import choose

    envs = m["environments"]
    assert set(envs) == set(ENVIRONMENTS)
    test_split = np.load(tmp_path / "cache" / "test.npy", allow_pickle=True)[0]
    parts = {env: environment(test_split, kinds) for env, kinds in ENVIRONMENTS.items()}
    assert sum(len(p["pos"]) for p in parts.values()) == len(test_split["pos"])
    assert abs(sum(p["neg_seconds"] for p in parts.values()) - test_split["neg_seconds"]) < 1e-6
    one = replace(preset, min_on_grid=(d["min_on_ms"],))
    for env, kinds in ENVIRONMENTS.items():
        e = envs[env]
        assert e["threshold"] == choose(one, new_cfg, environment(val, kinds))["threshold"]
        assert json.dumps(e["test"]) == json.dumps(score(  # (NaN onset errors: as text)
            preset, new_cfg, parts[env], e["threshold"], d["min_on_ms"], d["onset_lag_ms"]))
    alarms = cond["non_keyword_streams"].values()
    assert sum(a["false_alarms"] for a in alarms) == m["test"]["false_alarms"]
    assert abs(sum(a["hours"] for a in alarms) - m["test"]["negative_hours"]) < 2e-3


def test_label_thresholds_are_the_best_combination_within_the_false_alarm_budget(tmp_path):
    """Per-label thresholds: labels count independently (a setting's misses and false alarms
    are the sums of its labels'), and the dynamic programme finds the combination a brute
    force over every combination finds."""
    import itertools
    from dataclasses import replace

    from conftest import tiny_stream_bank

    from model.stream_eval import evaluate, score
    from model.train_streams import PRESETS, build, choose_label_thresholds, label_counts, smoke

    preset = replace(smoke(PRESETS["kws-events"]), thresholds=(0.5, 0.9, 0.999),
                     eval_pos={"val": (4, 20.0), "test": (2, 5.0)},
                     eval_neg={"val": (4, 30.0), "test": (2, 5.0)})
    net, cfg = build(preset, "cpu")
    net.eval()
    val = evaluate(net, cfg, preset, tiny_stream_bank(tmp_path / "bank"), "val",
                   torch.device("cpu"))
    counts = {t: label_counts(preset, cfg, val, t) for t in preset.thresholds}
    labels = sorted(counts[0.5])
    rate = 2400.0  # alarms per hour: 80 in the 2 min of non-keyword streams (untrained model)
    budget = int(rate * val["neg_seconds"] / 3600 + 1e-9)
    assert budget == 80
    best = None
    for combo in itertools.product(preset.thresholds, repeat=len(labels)):
        missed = sum(counts[t][k][0] for k, t in zip(labels, combo, strict=True))
        fa = sum(counts[t][k][1] for k, t in zip(labels, combo, strict=True))
        if fa <= budget and (best is None or (missed, fa) < best[:2]):
            best = (missed, fa, combo)
    chosen = choose_label_thresholds(preset, cfg, val, alarms_per_hour=rate)
    assert sum(counts[0.5][k][1] for k in labels) > budget  # the choice has work to do
    assert best is not None and set(chosen) == set(labels)
    assert len(set(chosen.values())) > 1  # not one threshold for all
    got_missed = sum(counts[chosen[k]][k][0] for k in labels)
    got_fa = sum(counts[chosen[k]][k][1] for k in labels)
    assert (got_missed, got_fa) == best[:2]
    # the detector with those thresholds scores what the per-label counts add up to
    s = score(preset, cfg, val, 0.9, label_on=chosen)
    assert (s["keywords"] - s["detected"], s["false_alarms"]) == (got_missed, got_fa)


def test_onset_lag_is_validations_median_lag_to_10_ms():
    from dataclasses import replace

    from model.train_streams import PRESETS, onset_lag

    kws, ecg = PRESETS["kws-events"], PRESETS["ecg-monitor"]
    assert kws.onset_lag and not ecg.onset_lag  # an ECG event's offset is its delay
    assert onset_lag(kws, {"onset_error_median_signed_ms": 73.4}) == 70.0
    assert onset_lag(kws, {"onset_error_median_signed_ms": 76.0}) == 80.0
    assert onset_lag(kws, {"onset_error_median_signed_ms": -40.0}) == 0.0  # early: no lag
    assert onset_lag(kws, {"onset_error_median_signed_ms": None}) == 0.0  # nothing detected
    assert onset_lag(replace(kws, onset_lag=False), {"onset_error_median_signed_ms": 90}) == 0.0


def test_engine_words_take_every_other_engine_the_bank_holds(tmp_path):
    """`--extra-words`: the training words of every engine but espeak-ng found in the keyword
    bank (here MBROLA and Pico files), keywords labelled by index, the rest unknown."""
    pytest.importorskip("espeakng_loader")  # the bank's plan lists espeak-ng's voices
    from model.data import kws_bank as kb
    from model.data.stream_bank import engine_words

    rng = np.random.default_rng(0)
    for engine in ("mbrola", "pico", "espeak"):
        jobs = [j for j in kb.plan(engine) if j["text"] in ("yes", "bed")][:4]
        wavs = [(rng.standard_normal(2000) * 3000).astype(np.int16) for _ in jobs]
        kb.write_engine(tmp_path, engine, jobs, wavs)
    audio, lengths, labels = engine_words(tmp_path)
    train_rows = [r for e in ("mbrola", "pico") for r in kb.load_bank(tmp_path, (e,))
                  if r["split"] == "train"]
    assert len(lengths) == len(train_rows) > 0 and int(lengths.sum()) == len(audio)
    assert sorted(labels.tolist()) == sorted(0 if r["text"] == "yes" else S.UNKNOWN
                                             for r in train_rows)


def test_eval_engines_scores_other_engines_test_voices_with_the_checkpoints_detector(tmp_path):
    """`--eval-engines`: streams of each other engine's test words (every engine but espeak-ng
    in the bank), scored with the checkpoint's own event defaults (nothing chosen on them);
    pooled counts are the engines' sums, the pooled curve holds the same point at the
    checkpoint's threshold, and the same seeds give the same file."""
    from dataclasses import replace

    from conftest import tiny_stream_bank

    from model.checkpoint import save_checkpoint
    from model.data import kws_bank as kb
    from model.stream_eval import eval_engines
    from model.train_streams import PRESETS, build, smoke

    rng = np.random.default_rng(1)
    data13 = tmp_path / "data13"
    for engine in ("mbrola", "pico"):
        jobs = [j for j in kb.plan(engine) if j["kind"] in ("keyword", "unknown")]
        wavs = [(rng.standard_normal(int(rng.integers(3000, 6000))) * 3000).astype(np.int16)
                for _ in jobs]
        kb.write_engine(data13, engine, jobs, wavs)
    preset = replace(smoke(PRESETS["kws-events"]), thresholds=(0.3, 0.6, 0.9))
    net, cfg = build(preset, "cpu")
    events = cfg.task.events.model_copy(update={"threshold": 0.6, "onset_lag_ms": 20.0})
    cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"events": events}),
                                 "metrics": {"environments": {  # the card's operating points
                                     "all": {"backgrounds": ["white", "pink", "babble", "quiet"],
                                             "threshold": 0.3}}}})
    save_checkpoint(tmp_path / "run", net, cfg)
    bank = tiny_stream_bank(tmp_path / "bank")

    m = eval_engines(preset, tmp_path / "run", bank, data13, tmp_path / "out", "cpu",
                     log=lambda *a: None)
    assert m["engines"] == ["mbrola", "pico"] and set(m["per_engine"]) == {"mbrola", "pico"}
    assert m["detector"]["threshold"] == 0.6 and m["detector"]["onset_lag_ms"] == 20.0
    for key in ("keywords", "detected", "false_alarms"):
        assert m["pooled"][key] == sum(e[key] for e in m["per_engine"].values())
    assert m["pooled"]["keywords"] > 0
    at = next(c for c in m["pooled_curve"] if c["threshold"] == 0.6)
    assert json.dumps({k: at[k] for k in m["pooled"]}) == json.dumps(m["pooled"])  # NaN-safe
    # by background at the shipped threshold, and each operating point on these voices
    cells = m["pooled_by_condition"]["keyword_streams"]
    assert (cells["all"]["keywords"], cells["all"]["detected"]) == (
        m["pooled"]["keywords"], m["pooled"]["detected"])
    low = next(c for c in m["pooled_curve"] if c["threshold"] == 0.3)
    assert json.dumps({k: low[k] for k in m["pooled"]}) == json.dumps(
        m["environments"]["all"]["engines"])  # every background: the curve's point at 0.3
    first = (tmp_path / "out" / "engines.json").read_text()
    eval_engines(preset, tmp_path / "run", bank, data13, tmp_path / "out", "cpu",
                 log=lambda *a: None)
    assert (tmp_path / "out" / "engines.json").read_text() == first


def _ecg_bank(path: Path, generator: str | None, seed: int) -> Path:
    """A tiny ECG stream bank (val / test windows of every class; a class's windows sit at its
    index in mV, as test_ecg_streams_change_rhythm... reads them) with or without its
    generator recorded."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {} if generator is None else {"generator": np.array(generator)}
    for split in ("val", "test"):
        y = np.repeat(np.arange(5), 4)
        arrays[f"{split}_x"] = (y[:, None] + 0.1 * rng.standard_normal((20, 2500))).astype(
            np.float16)
        arrays[f"{split}_y"] = y
    np.savez(path / "ecg.npz", **arrays)
    return path


def test_eval_generators_scores_other_banks_with_the_checkpoints_detector(tmp_path):
    """`--eval-generators`: each bank's test streams (the preset's recipe, CPU seeds) scored
    with the checkpoint's own detector (changes_only and threshold from its config); the same
    call twice writes the same file; a bank made before generators were recorded is ECGSYN."""
    from dataclasses import replace as dc_replace

    from model.checkpoint import save_checkpoint
    from model.data.stream_bank import ecg_generator
    from model.stream_eval import eval_generators, evaluate, score
    from model.train_streams import PRESETS, build, smoke

    preset = smoke(PRESETS["ecg-monitor"])
    net, cfg = build(preset, "cpu")
    events = cfg.task.events.model_copy(update={"threshold": 0.5, "changes_only": True})
    cfg = cfg.model_copy(update={"task": cfg.task.model_copy(update={"events": events})})
    save_checkpoint(tmp_path / "run", net, cfg)
    banks = {"a": _ecg_bank(tmp_path / "a", "shift", 1), "b": _ecg_bank(tmp_path / "b", None, 2)}
    assert ecg_generator(banks["a"]) == "shift" and ecg_generator(banks["b"]) == "ecgsyn"
    m = eval_generators(dc_replace(preset, changes_only=False), tmp_path / "run", banks,
                        tmp_path / "out", "cpu", log=lambda *a: None)
    assert m["detector"]["changes_only"] is True and m["detector"]["threshold"] == 0.5
    assert [v["generator"] for v in m["per_bank"].values()] == ["shift", "ecgsyn"]
    shipped = dc_replace(preset, changes_only=True)
    data = evaluate(net.eval(), cfg, shipped, banks["a"], "test", torch.device("cpu"))
    want = score(shipped, cfg, data, 0.5)
    got = {k: m["per_bank"]["a"][k] for k in want}
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)  # NaN delays
    first = (tmp_path / "out" / "generators.json").read_text()
    eval_generators(preset, tmp_path / "run", banks, tmp_path / "out", "cpu", log=lambda *a: None)
    assert (tmp_path / "out" / "generators.json").read_text() == first
    with pytest.raises(ValueError, match="ECG models"):
        eval_generators(PRESETS["kws-events"], tmp_path / "run", banks, tmp_path / "o", "cpu")
