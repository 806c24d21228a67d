"""Event detection settings of a stream or a /predict request: the model's defaults (META
`events`), overridden by the client's `"events"` field (PROTOCOL.md), validated with a clear
error. The detector itself is model/events.py (pure, shared with the batch path)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from model.config import EventsConfig
from model.events import DetectorSettings, EventDetector

#: fields a client may override (the rest of META `events` is informational)
OVERRIDABLE = ("threshold", "hysteresis", "holdoff_ms", "min_on_ms", "onset_lag_ms",
               "label_thresholds", "background", "changes_only")


class EventsSettingsError(ValueError):
    """The client's `events` field is invalid (message says which part and why)."""


def _describe(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ())) or "events"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def resolve(value: Any, meta) -> DetectorSettings | None:
    """DetectorSettings for a stream of model `meta`, or None when events are off.

    `value`: None (the model's defaults), a bool (on with defaults / off), or an object with
    any of threshold, hysteresis, holdoff_ms, min_on_ms, onset_lag_ms, label_thresholds,
    background, changes_only. A `threshold` without `label_thresholds` applies to every label
    (the model's per-label thresholds are dropped)."""
    defaults = dict(meta.events or {})
    if value is None:
        value = bool(defaults.get("enabled", True))
    if value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise EventsSettingsError("events must be true, false or an object with "
                                  f"{', '.join(OVERRIDABLE)}")
    unknown = sorted(set(value) - set(OVERRIDABLE))
    if unknown:
        raise EventsSettingsError(f"events: unknown field(s) {unknown}; use {list(OVERRIDABLE)}")
    for key in ("threshold", "hysteresis", "holdoff_ms", "min_on_ms", "onset_lag_ms"):
        v = value.get(key)
        if key in value and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise EventsSettingsError(f"events.{key} must be a number")
    per_label = value.get("label_thresholds")
    if "label_thresholds" in value and per_label is not None and (
            not isinstance(per_label, dict) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in per_label.values())):
        raise EventsSettingsError("events.label_thresholds must be an object of label: number")
    if "changes_only" in value and not isinstance(value["changes_only"], bool):
        raise EventsSettingsError("events.changes_only must be true or false")
    bg = value.get("background")
    if "background" in value and (not isinstance(bg, list)
                                  or not all(isinstance(b, str) for b in bg)):
        raise EventsSettingsError("events.background must be a list of class names")
    merged = {k: defaults[k] for k in OVERRIDABLE if k in defaults}
    if "threshold" in value and "label_thresholds" not in value:
        merged.pop("label_thresholds", None)
    merged.update(value)
    try:
        cfg = EventsConfig(**merged)
    except ValidationError as exc:
        raise EventsSettingsError(f"events: {_describe(exc)}") from None
    try:
        return DetectorSettings.from_config(cfg, meta.classes, meta.sample_rate)
    except ValueError as exc:
        raise EventsSettingsError(f"events: {exc}") from None


def detector(settings: DetectorSettings | None, meta) -> EventDetector | None:
    return None if settings is None else EventDetector(meta.classes, settings)


def describe(settings: DetectorSettings | None, meta) -> dict | bool:
    """What `started` echoes: the effective settings, or false."""
    if settings is None:
        return False
    watched = set(settings.watched)
    return {
        "threshold": settings.on_threshold,
        "off_threshold": settings.off_threshold,
        "holdoff_samples": settings.holdoff_samples,
        "min_on_samples": settings.min_on_samples,
        "onset_lag_samples": settings.onset_lag_samples,
        "label_thresholds": {meta.classes[k]: t for k, t in settings.label_on},
        "background": [c for i, c in enumerate(meta.classes) if i not in watched],
        "changes_only": settings.changes_only,
    }
