"""Events from a stream of class probabilities: "yes at 12.34 s", "af_like from 08:14:05".

Pure (no I/O, no clock): the stream and the batch path feed the same detector the same
per-frame probabilities, so they report the same events.

The input is one probability vector per frame, with the frame's end `offset` (samples
consumed so far; the `offset` of a `result` message). Per label that is not background:
- it turns on when p >= threshold has held from an onset frame through a frame at least
  `min_on` samples later (min_on = 0: at the onset frame itself; a run of p >= threshold that
  ends sooner raises nothing), and off when p < threshold - hysteresis;
- turning on raises an event {"label", "offset", "probability"}: `offset` is the offset of
  the onset frame, `probability` the label's probability at that frame (events are raised
  when the label turns on, not when it turns off, so there is no peak to wait for; with
  min_on > 0 the event comes min_on samples after its onset);
- unless that label's previous event is less than `holdoff` samples before: then it turns on
  silently (one keyword said once raises one event even if the probability flickers);
- with `changes_only`, also silently while the label is that of the last event raised (since
  the start or a reset): a rhythm monitor reports changes, and the rhythm it last reported
  coming back after a dip in its probability is no change.
The reported `offset` is the onset frame's moved `onset_lag` samples earlier (not before the
segment's start): a model lags behind what it detects (a keyword is recognised some frames
after it ends), and the lag measured on validation streams makes the offset an estimate of when
the thing happened rather than of when the model was sure. Hold-offs count between onset
frames, so the lag changes no decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .config import EventsConfig


@dataclass(frozen=True)
class DetectorSettings:
    """Thresholds in probability, hold-off in samples, background as class indices."""

    on_threshold: float
    off_threshold: float
    holdoff_samples: int
    watched: tuple[int, ...]  # indices of the labels that may raise events
    min_on_samples: int = 0  # p >= on_threshold must hold this long before a label turns on
    onset_lag_samples: int = 0  # reported offsets: the onset frame's, this much earlier
    label_on: tuple[tuple[int, float], ...] = ()  # (class index, its own on-threshold)
    changes_only: bool = False  # no event for the label of the last event

    def on_for(self, k: int) -> float:
        """Class k's on-threshold (its own where `label_on` names it)."""
        return dict(self.label_on).get(k, self.on_threshold)

    def off_for(self, k: int) -> float:
        """Class k's off-threshold: its on-threshold less the same hysteresis."""
        return self.on_for(k) - (self.on_threshold - self.off_threshold)

    def reported(self, onset: int, segment_start: int = 0) -> int:
        """The offset an event at onset frame `onset` reports."""
        return max(onset - self.onset_lag_samples, segment_start)

    @classmethod
    def from_config(cls, cfg: EventsConfig, class_names: Sequence[str],
                    sample_rate: float) -> DetectorSettings:
        background = set(cfg.background_labels(list(class_names)))
        unknown = background - set(class_names)
        if unknown:
            raise ValueError(f"background names unknown classes {sorted(unknown)}; "
                             f"the classes are {list(class_names)}")
        per_label = cfg.label_thresholds or {}
        wrong = sorted(set(per_label) - (set(class_names) - background))
        if wrong:
            raise ValueError(f"label_thresholds names {wrong}, which are not labels that raise "
                             f"events; those are {[c for c in class_names if c not in background]}")
        return cls(
            on_threshold=cfg.threshold,
            off_threshold=cfg.off_threshold,
            holdoff_samples=int(round(cfg.holdoff_ms * sample_rate / 1000.0)),
            watched=tuple(i for i, c in enumerate(class_names) if c not in background),
            min_on_samples=int(round(cfg.min_on_ms * sample_rate / 1000.0)),
            onset_lag_samples=int(round(cfg.onset_lag_ms * sample_rate / 1000.0)),
            label_on=tuple((class_names.index(c), float(t)) for c, t in per_label.items()),
            changes_only=cfg.changes_only,
        )


class EventDetector:
    """Per-session detector state: which labels are on, and each label's last event."""

    def __init__(self, class_names: Sequence[str], settings: DetectorSettings):
        self.class_names = list(class_names)
        self.settings = settings
        self.on = np.zeros(len(self.class_names), dtype=bool)
        self.last_event: dict[int, int] = {}
        self.onset: dict[int, tuple[int, float]] = {}  # label -> (offset, p) of a run not yet on
        self.segment_start = 0  # no event reports an offset before it
        self.last_label: int | None = None  # of the last event raised (changes_only)
        self.on_at = {i: settings.on_for(i) for i in settings.watched}  # per-label thresholds,
        self.off_at = {i: settings.off_for(i) for i in settings.watched}  # looked up once

    def update(self, offset: int, probs: Iterable[float]) -> list[dict]:
        """Events raised by the frame that ends at `offset` (in order of class index)."""
        s = self.settings
        p = np.asarray(probs, dtype=np.float64)
        events = []
        for i in s.watched:
            if self.on[i]:
                if p[i] < self.off_at[i]:
                    self.on[i] = False
                continue
            if p[i] < self.on_at[i]:
                self.onset.pop(i, None)
                continue
            start, p_start = self.onset.setdefault(i, (int(offset), float(p[i])))
            if offset - start < s.min_on_samples:
                continue
            del self.onset[i]
            self.on[i] = True
            if s.changes_only and i == self.last_label:
                continue
            last = self.last_event.get(i)
            if last is None or start - last >= s.holdoff_samples:
                self.last_event[i] = start
                self.last_label = i
                events.append({"label": self.class_names[i],
                               "offset": s.reported(start, self.segment_start),
                               "probability": p_start})
        return events

    def reset(self, at: int = 0) -> None:
        """A new segment from offset `at` (the model's state was reset): every label off and no
        onset pending, no label reported yet (changes_only reports the first again); hold-offs
        stay, as they count in samples of the same stream."""
        self.on[:] = False
        self.onset.clear()
        self.last_label = None
        self.segment_start = int(at)


def detect(class_names: Sequence[str], settings: DetectorSettings, offsets: Iterable[int],
           probs: Iterable[Iterable[float]]) -> list[dict]:
    """All events of a whole sequence of frames (the batch path)."""
    det = EventDetector(class_names, settings)
    out: list[dict] = []
    for offset, p in zip(offsets, probs, strict=True):
        out.extend(det.update(int(offset), p))
    return out


def frame_ends(length: int, frame_size: int, patch_size: int) -> list[int]:
    """The offsets at which a stream of `length` samples, sent and then ended, gets a
    prediction: every full frame, then the partial last frame (whole patches; a tail shorter
    than a patch is ignored, as in the batch forward)."""
    ends = list(range(frame_size, length + 1, frame_size))
    tail = (length // patch_size) * patch_size
    if tail > (ends[-1] if ends else 0):
        ends.append(tail)
    return ends
