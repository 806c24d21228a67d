"""The event detector (model/events.py): threshold, hysteresis, hold-off, background labels,
and its settings from a checkpoint's task config."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from model.config import CheckpointConfig, EventsConfig, ModelConfig, TaskConfig
from model.events import DetectorSettings, EventDetector, detect, frame_ends

CLASSES = ["yes", "no", "unknown", "silence"]


def settings_(threshold=0.8, hysteresis=0.2, holdoff_ms=0.0, background=None, rate=1000):
    cfg = EventsConfig(threshold=threshold, hysteresis=hysteresis, holdoff_ms=holdoff_ms,
                       background=background)
    return DetectorSettings.from_config(cfg, CLASSES, rate)


def run(seq, s, frame=10):
    """seq: per frame, probability of "yes" (the rest goes to "unknown")."""
    probs = [[p, 0.0, 1 - p, 0.0] for p in seq]
    return detect(CLASSES, s, [frame * (i + 1) for i in range(len(seq))], probs)


def test_onset_offset_and_probability_at_onset():
    ev = run([0.1, 0.5, 0.85, 0.95, 0.9, 0.3], settings_())
    assert ev == [{"label": "yes", "offset": 30, "probability": 0.85}]


def test_hysteresis_keeps_a_flickering_label_on():
    # dips to 0.7 (>= 0.8 - 0.2) do not turn it off; a dip to 0.55 does
    assert len(run([0.9, 0.7, 0.9, 0.61, 0.85], settings_())) == 1
    ev = run([0.9, 0.55, 0.9], settings_())
    assert [e["offset"] for e in ev] == [10, 30]
    # without hysteresis every crossing is an onset
    assert len(run([0.9, 0.7, 0.9, 0.7, 0.9], settings_(hysteresis=0.0))) == 3


def test_holdoff_suppresses_events_closer_than_holdoff():
    seq = [0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9]  # onsets at 10, 30, 50, 70 samples
    assert [e["offset"] for e in run(seq, settings_())] == [10, 30, 50, 70]
    # 35 ms at 1 kHz = 35 samples: 30 is suppressed (20 after 10), 50 is 40 after 10: fires
    assert [e["offset"] for e in run(seq, settings_(holdoff_ms=35))] == [10, 50]
    # the hold-off counts from the last *event*: exactly holdoff samples apart fires
    assert [e["offset"] for e in run(seq, settings_(holdoff_ms=40))] == [10, 50]
    assert [e["offset"] for e in run(seq, settings_(holdoff_ms=41))] == [10, 70]


def test_background_labels_never_raise_events():
    probs = [[0.0, 0.0, 0.95, 0.05], [0.0, 0.0, 0.05, 0.95], [0.0, 0.9, 0.1, 0.0]]
    ev = detect(CLASSES, settings_(), [1, 2, 3], probs)
    assert ev == [{"label": "no", "offset": 3, "probability": 0.9}]
    # background given explicitly replaces the default
    ev = detect(CLASSES, settings_(background=["no"]), [1, 2, 3], probs)
    assert [e["label"] for e in ev] == ["unknown", "silence"]
    with pytest.raises(ValueError, match="unknown classes"):
        settings_(background=["maybe"])


def test_labels_are_independent_and_reset_turns_them_off():
    det = EventDetector(CLASSES, settings_(threshold=0.4, hysteresis=0.1))
    assert [e["label"] for e in det.update(5, [0.45, 0.45, 0.1, 0.0])] == ["yes", "no"]
    assert det.update(10, [0.45, 0.45, 0.1, 0.0]) == []
    det.reset()
    assert [e["label"] for e in det.update(15, [0.45, 0.1, 0.45, 0.0])] == ["yes"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), max_size=60), st.integers(0, 100), st.integers(1, 5))
def test_properties(seq, holdoff_ms, split):
    """Events are onsets above threshold, one label's events are >= hold-off apart, and the
    detector fed in pieces (a stream) gives what it gives on the whole sequence."""
    s = settings_(holdoff_ms=holdoff_ms)
    ev = run(seq, s)
    for e in ev:
        assert e["probability"] >= 0.8 and e["offset"] % 10 == 0
    offs = [e["offset"] for e in ev]
    assert all(b - a >= s.holdoff_samples for a, b in zip(offs, offs[1:]))
    det, streamed = EventDetector(CLASSES, s), []
    for lo in range(0, len(seq), split):
        for i in range(lo, min(len(seq), lo + split)):
            streamed += det.update(10 * (i + 1), [seq[i], 0.0, 1 - seq[i], 0.0])
    assert streamed == ev


def test_onset_lag_moves_offsets_not_decisions():
    """Events report onset frame - lag (never before the segment's start); which frames raise
    events, and hold-offs, are those of the detector without a lag."""
    seq = [0.1, 0.9, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.9]
    plain = run(seq, settings_(holdoff_ms=40))
    cfg = EventsConfig(threshold=0.8, hysteresis=0.2, holdoff_ms=40, onset_lag_ms=15)
    lagged = run(seq, DetectorSettings.from_config(cfg, CLASSES, 1000))
    assert [e["offset"] for e in plain] == [20, 70]  # 100: within the 40 ms hold-off of 70
    assert lagged == [dict(e, offset=e["offset"] - 15) for e in plain]
    big = DetectorSettings.from_config(cfg.model_copy(update={"onset_lag_ms": 500}), CLASSES, 1000)
    assert [e["offset"] for e in run(seq, big)] == [0, 0]  # not before the stream's start
    det = EventDetector(CLASSES, big)
    assert det.update(10, [0.9, 0.0, 0.1, 0.0])[0]["offset"] == 0
    det.reset(at=300)  # a new segment from offset 300: no onset reported before it
    assert det.update(320, [0.1, 0.9, 0.0, 0.0])[0]["offset"] == 300
    with pytest.raises(ValidationError):
        EventsConfig(onset_lag_ms=-1)


def test_frame_ends_follow_the_stream():
    assert frame_ends(100, 32, 1) == [32, 64, 96, 100]
    assert frame_ends(96, 32, 1) == [32, 64, 96]
    assert frame_ends(101, 32, 4) == [32, 64, 96, 100]
    assert frame_ends(99, 32, 4) == [32, 64, 96]
    assert frame_ends(3, 32, 4) == []


def test_config_defaults_and_validation():
    kws = TaskConfig(name="kws", class_names=CLASSES)
    assert kws.events.enabled and kws.events.background_labels(CLASSES) == ["unknown", "silence"]
    ecg = ["brady", "normal", "tachy", "af_like", "wide_qrs"]
    assert EventsConfig().background_labels(ecg) == ["normal"]
    with pytest.raises(ValidationError, match="hysteresis"):
        EventsConfig(threshold=0.5, hysteresis=0.5)
    with pytest.raises(ValidationError):
        EventsConfig(threshold=1.5)
    with pytest.raises(ValidationError, match="unknown classes"):
        CheckpointConfig(model=ModelConfig(d_output=4),
                         task=TaskConfig(class_names=CLASSES, events={"background": ["x"]}))
    # a config.json without an events section (every shipped checkpoint) gets the defaults
    cfg = CheckpointConfig.model_validate({"model": {"d_output": 4},
                                           "task": {"class_names": CLASSES}})
    assert cfg.task.events == EventsConfig()
    s = DetectorSettings.from_config(cfg.task.events, CLASSES, 16000)
    assert s.holdoff_samples == 8000 and s.watched == (0, 1)
    assert np.isclose(s.off_threshold, 0.6)


def test_changes_only_reports_changes_of_label():
    """changes_only: the label of the last event coming back after a dip raises nothing; another
    label does, and then the first one again; a reset reports the current label again."""
    cfg = EventsConfig(threshold=0.8, hysteresis=0.2, holdoff_ms=0, background=[],
                       changes_only=True)
    s = DetectorSettings.from_config(cfg, CLASSES, 1000)
    frames = [[0.9, 0.1, 0, 0], [0.5, 0.5, 0, 0], [0.9, 0.1, 0, 0],  # yes, dip, yes again
              [0.1, 0.9, 0, 0], [0.9, 0.1, 0, 0]]  # no, then yes
    offsets = [10, 20, 30, 40, 50]
    assert [(e["label"], e["offset"]) for e in detect(CLASSES, s, offsets, frames)] == [
        ("yes", 10), ("no", 40), ("yes", 50)]
    plain = DetectorSettings.from_config(cfg.model_copy(update={"changes_only": False}),
                                         CLASSES, 1000)
    assert [e["offset"] for e in detect(CLASSES, plain, offsets, frames)] == [10, 30, 40, 50]
    det = EventDetector(CLASSES, s)
    assert len(det.update(10, frames[0])) == 1
    det.reset(at=10)
    assert [e["label"] for e in det.update(20, frames[0])] == ["yes"]
    assert EventsConfig().changes_only is False
