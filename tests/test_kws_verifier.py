"""bench/kws_verifier.py: the verifier's windows, and that verifying only ever removes events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import tiny_stream_bank

from bench.kws_verifier import collect, kept, sweep, windows
from model.train_streams import PRESETS, smoke

ROOT = Path(__file__).resolve().parents[1]


def test_windows_end_at_onset_plus_delay_and_pad_on_the_left():
    x = torch.arange(1, 11, dtype=torch.float32)  # samples 1..10
    w = windows(x, [4, 10], [0, 3], 5)[..., 0]
    assert w[0].tolist() == [0, 1, 2, 3, 4]  # the 5 samples before offset 4: padded
    assert w[1].tolist() == [3, 4, 5, 6, 7]  # offset 4 + delay 3
    assert w[2].tolist() == [6, 7, 8, 9, 10]  # offset 10
    assert w[3].tolist() == [6, 7, 8, 9, 10]  # offset 10 + 3: clipped to the stream's end


def test_kept_keeps_what_the_verifier_confirms():
    names = ["yes", "no", "unknown"]
    evs = {0.9: [{"label": "yes", "offset": 100}, {"label": "no", "offset": 900}]}
    checks = {(100, 0.0): np.array([0.8, 0.1, 0.1]), (900, 0.0): np.array([0.6, 0.3, 0.1])}
    assert kept(evs, checks, names, 0.9, None, None) == evs[0.9]
    assert [e["label"] for e in kept(evs, checks, names, 0.9, 0.0, 0.5)] == ["yes"]
    assert kept(evs, checks, names, 0.9, 0.0, 0.9) == []


def test_verifying_never_adds_events(tmp_path):
    """On streams of the tiny bank with the shipped models: at every threshold the verified
    events are a subset of the detector's (fewer or equal false alarms, no fewer misses)."""
    data = collect("val", ROOT / "checkpoints" / "kws-events-s4d", ROOT / "checkpoints" / "kws-s4d",
                   tiny_stream_bank(tmp_path / "bank"), smoke(PRESETS["kws-events"]))
    rows = sweep(data)
    plain = {r["threshold"]: r for r in rows if r["delay_s"] is None}
    verified = [r for r in rows if r["delay_s"] is not None]
    assert len(verified) == len(rows) - len(plain) > 0
    for r in verified:
        assert r["fa_per_hour"] <= plain[r["threshold"]]["fa_per_hour"]
        assert r["frr"] >= plain[r["threshold"]]["frr"]
