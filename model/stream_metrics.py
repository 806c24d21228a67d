"""Metrics people use for continuous streams, from event lists and the truth of a stream.

Keywords (a keyword is "present" from its end): a keyword occurrence is detected when an
event of its label falls in [word start, word end + `window_s`]; each event matches at most
one occurrence. False rejection rate = missed / occurrences (a wrong label is a miss);
onset error = event offset - word end. False alarms are events on streams of non-keyword
audio only, per hour of that audio. "FRR at 1 FA/h" comes from a threshold sweep.

ECG rhythm changes: a change (a segment after the first) is detected within `within_s` when
an event of the new rhythm falls in [change, change + within_s]; delay = that event's offset
- change. An event is a true report when it is the first event of its segment's label within
the segment (late reports included); every other event is a false change, per hour.

`detect_frames` is model/events.py's detector in vectorised form (identical events; tested),
so thresholds can be swept over hours of frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .events import DetectorSettings


def detect_frames(probs: np.ndarray, offsets: np.ndarray, settings: DetectorSettings,
                  class_names: Sequence[str]) -> list[dict]:
    """The events `model.events.detect` reports for frames probs [F, K] ending at offsets [F]
    (sorted by onset, then class)."""
    return [ev for _, _, ev in _onsets(probs, offsets, settings, class_names)]


def _onsets(probs: np.ndarray, offsets: np.ndarray, settings: DetectorSettings,
            class_names: Sequence[str]) -> list[tuple[int, int, dict]]:
    """(onset frame's offset, class, event) of every event, sorted by reported offset, then
    class.

    Per label, over the maximal runs of frames with p >= on: a run that starts while the label
    is off turns it on at its first frame at least `min_on_samples` after the run's onset (a
    shorter run raises nothing); the label stays on until a frame with p < off. Turning on
    raises an event at the onset unless the label's last event is < hold-off before (or, with
    `changes_only`, the label is that of the last event raised: then turn-ons of every label
    are taken in the detector's order, frame by frame and by class within a frame)."""
    probs = np.asarray(probs, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    f = len(offsets)
    if f == 0:
        return []
    turn_ons: list[tuple[int, int, int, float]] = []  # (frame turned on, class, onset, p)
    for k in settings.watched:
        p = probs[:, k]
        edges = np.diff(np.concatenate([[0], (p >= settings.on_for(k)).astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
        below_off = np.flatnonzero(p < settings.off_for(k))
        on_until = -1
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if s <= on_until:  # the label is still on from an earlier run
                continue
            c = int(np.searchsorted(offsets, offsets[s] + settings.min_on_samples))
            if c > e:  # the run ended before it held long enough
                continue
            j = int(np.searchsorted(below_off, c, side="right"))
            on_until = int(below_off[j]) - 1 if j < len(below_off) else f
            turn_ons.append((c, k, int(offsets[s]), float(p[s])))
    if settings.changes_only:
        turn_ons.sort()
    out: list[tuple[int, int, dict]] = []
    last: dict[int, int] = {}
    last_label = None
    for _, k, onset, p0 in turn_ons:  # per class in time order; all in order with changes_only
        if settings.changes_only and k == last_label:
            continue
        if k not in last or onset - last[k] >= settings.holdoff_samples:
            last[k], last_label = onset, k
            out.append((onset, k, {"label": class_names[k], "offset": settings.reported(onset),
                                   "probability": p0}))
    out.sort(key=lambda e: (e[2]["offset"], e[1]))
    return out


def detect_many(streams: Sequence[tuple[np.ndarray, np.ndarray]], settings: DetectorSettings,
                class_names: Sequence[str]) -> list[list[dict]]:
    """`detect_frames` of many streams in one pass: streams are laid end to end with a frame
    of p = -1 between them (every label off) and offsets moved past every hold-off, then
    the events are split back (offsets restored). With `changes_only` one by one."""
    if not streams:
        return []
    if settings.changes_only:  # the last event's label must not cross into the next stream
        return [detect_frames(p, e, settings, class_names) for p, e in streams]
    k = streams[0][0].shape[1]
    probs, offsets, shifts = [], [], []
    shift = 0
    for p, e in streams:
        probs += [np.asarray(p, np.float64), np.full((1, k), -1.0)]
        e = np.asarray(e, np.int64)
        offsets += [e + shift, np.array([e[-1] + shift + 1 if len(e) else shift + 1])]
        shifts.append(shift)
        shift += (int(e[-1]) if len(e) else 0) + settings.holdoff_samples + 2
    events = _onsets(np.concatenate(probs), np.concatenate(offsets), settings, class_names)
    found: list[list[tuple[int, int, dict]]] = [[] for _ in streams]
    starts = np.array(shifts)
    for onset, k, ev in events:  # each stream a segment of its own: lag stops at its start
        i = int(np.searchsorted(starts, onset, side="right")) - 1
        reported = settings.reported(onset - shifts[i])
        found[i].append((reported, k, dict(ev, offset=reported)))
    return [[ev for _, _, ev in sorted(f, key=lambda e: e[:2])] for f in found]


def settings_for(threshold: float, hysteresis: float, holdoff_ms: float, watched: Sequence[int],
                 sample_rate: int, min_on_ms: float = 0.0, onset_lag_ms: float = 0.0,
                 label_on: dict[int, float] | None = None,
                 changes_only: bool = False) -> DetectorSettings:
    """`label_on`: class index -> its own on-threshold (the rest use `threshold`)."""
    return DetectorSettings(on_threshold=threshold, off_threshold=threshold - hysteresis,
                            holdoff_samples=int(round(holdoff_ms * sample_rate / 1000.0)),
                            watched=tuple(watched),
                            min_on_samples=int(round(min_on_ms * sample_rate / 1000.0)),
                            onset_lag_samples=int(round(onset_lag_ms * sample_rate / 1000.0)),
                            label_on=tuple(sorted((label_on or {}).items())),
                            changes_only=changes_only)


# ----------------------------------------------------------------------------- keywords
def kws_match(events: list[dict], words: list, class_names: Sequence[str], rate: int,
              window_s: float = 1.0) -> tuple[int, int, list[float], int]:
    """(keywords, detected, onset errors in s, unmatched events) of one stream.
    `words`: objects with start, end (samples), label (index; keywords < 10)."""
    keywords = sorted((w for w in words if class_names[w.label] not in ("unknown", "silence")),
                      key=lambda w: w.end)
    used = [False] * len(events)
    detected, errors = 0, []
    win = int(round(window_s * rate))
    for w in keywords:
        for i, e in enumerate(events):
            if used[i] or e["label"] != class_names[w.label]:
                continue
            if w.start <= e["offset"] <= w.end + win:
                used[i] = True
                detected += 1
                errors.append((e["offset"] - w.end) / rate)
                break
    return len(keywords), detected, errors, used.count(False)


def kws_summary(pos: list[tuple[list[dict], list]], neg_events: list[list[dict]],
                neg_seconds: float, pos_seconds: float, class_names: Sequence[str],
                rate: int) -> dict:
    total = detected = unmatched = 0
    errors: list[float] = []
    for events, words in pos:
        n, d, errs, u = kws_match(events, words, class_names, rate)
        total, detected, unmatched = total + n, detected + d, unmatched + u
        errors += errs
    fa = sum(len(e) for e in neg_events)
    abs_err = np.abs(np.array(errors)) if errors else np.array([np.nan])
    return {
        "keywords": total, "detected": detected,
        "false_rejection_rate": round(1 - detected / max(total, 1), 4),
        "false_alarms": fa, "negative_hours": round(neg_seconds / 3600, 3),
        "false_alarms_per_hour": round(fa / max(neg_seconds / 3600, 1e-9), 3),
        "unmatched_events_per_hour_on_keyword_streams": round(
            unmatched / max(pos_seconds / 3600, 1e-9), 3),
        "onset_error_p50_ms": round(1000 * float(np.percentile(abs_err, 50)), 1),
        "onset_error_p90_ms": round(1000 * float(np.percentile(abs_err, 90)), 1),
        "onset_error_mean_signed_ms": round(1000 * float(np.mean(errors)), 1) if errors else None,
        "onset_error_median_signed_ms": (round(1000 * float(np.median(errors)), 1) if errors
                                         else None),
    }  # fmt: skip


# ----------------------------------------------------------------------------- ECG
def ecg_match(events: list[dict], segments: list, class_names: Sequence[str], rate: int,
              within_s: float = 15.0) -> dict:
    """Per stream: changes, detected within `within_s`, delays (s), true and false events.
    `segments`: objects with start, end (samples), label (index), in time order."""
    win = int(round(within_s * rate))
    changes, detected, delays = 0, 0, []
    true_ids: set[int] = set()
    for si, seg in enumerate(segments):
        label = class_names[seg.label]
        first = next((i for i, e in enumerate(events)
                      if e["label"] == label and seg.start <= e["offset"] < seg.end), None)
        if first is not None:
            true_ids.add(first)
        if si == 0:
            continue
        changes += 1
        hit = next((e for e in events if e["label"] == label
                    and seg.start <= e["offset"] <= seg.start + win), None)
        if hit is not None:
            detected += 1
            delays.append((hit["offset"] - seg.start) / rate)
    return {"changes": changes, "detected": detected, "delays": delays,
            "false": len(events) - len(true_ids)}


def ecg_summary(streams: list[tuple[list[dict], list]], seconds: float,
                class_names: Sequence[str], rate: int, within_s: float = 15.0) -> dict:
    changes = detected = false = 0
    delays: list[float] = []
    for events, segments in streams:
        m = ecg_match(events, segments, class_names, rate, within_s)
        changes, detected, false = changes + m["changes"], detected + m["detected"], false + m["false"]
        delays += m["delays"]
    d = np.array(delays) if delays else np.array([np.nan])
    return {
        "changes": changes, "detected_within_s": within_s, "detected": detected,
        "detected_share": round(detected / max(changes, 1), 4),
        "delay_median_s": round(float(np.median(d)), 2),
        "delay_p90_s": round(float(np.percentile(d, 90)), 2),
        "false_changes": false, "hours": round(seconds / 3600, 3),
        "false_changes_per_hour": round(false / max(seconds / 3600, 1e-9), 3),
    }
