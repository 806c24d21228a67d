"""Events on the wire (real server): `event` messages equal the detector run on the batch
path's per-frame probabilities; `start` overrides; bad settings are `bad_start`."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from model.config import EventsConfig
from model.events import DetectorSettings, detect, frame_ends

MODEL, RATE, FRAME, CLASSES = "tinyema", 2000, 32, ["yes", "no", "unknown"]


def signal(seed: int, n: int) -> np.ndarray:
    """Bursts of loud noise between quiet stretches: the ema model's probabilities move."""
    rng = np.random.default_rng(seed)
    env = np.repeat(rng.choice([0.02, 0.9], size=n // 200 + 1), 200)[:n]
    return (rng.standard_normal((n, 1)) * env[:, None]).clip(-0.99, 0.99).astype(np.float32)


def frame_probs(h, x: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Batch predictions of every prefix the stream reports on (the batch path)."""
    ends, rows = frame_ends(len(x), FRAME, 1), []
    for i in range(0, len(ends), 64):  # the server takes 64 sequences per request
        r = httpx.post(f"{h.base_url}/v1/models/{MODEL}/predict",
                       json={"inputs": [x[:e, 0].tolist() for e in ends[i:i + 64]]}, timeout=60)
        assert r.status_code == 200, r.text
        rows += [[p["probabilities"][c] for c in CLASSES] for p in r.json()["predictions"]]
    return ends, np.array(rows)


def threshold_between(values: np.ndarray) -> float:
    """A threshold in the widest gap of the middle of `values`: no value within float32
    rounding of it, so both paths cross it on the same frames."""
    v = np.sort(values)
    lo, hi = len(v) // 4, 3 * len(v) // 4
    i = lo + int(np.argmax(np.diff(v[lo:hi + 1])))
    return float((v[i] + v[i + 1]) / 2)


def one_label_setup(h, seed: int):
    """A test signal, its batch frame probabilities, the label that moves most, and detector
    settings that watch only that label with a threshold both paths cross on the same frames."""
    x = signal(seed, 3000)
    ends, probs = frame_probs(h, x)
    label = int(np.argmax(probs.std(0)))
    thr = threshold_between(probs[:, label])
    base = {"threshold": thr, "hysteresis": min(0.01, thr / 2), "holdoff_ms": 0,
            "background": [c for i, c in enumerate(CLASSES) if i != label]}
    return x, ends, probs, label, base


def events_of(res) -> list[dict]:
    return [m for m in res.messages if m.get("type") == "event"]


@pytest.mark.parametrize("seed", [0, 1])
def test_stream_events_equal_detector_on_batch_outputs(live_server, ws_client, seed):
    x = signal(seed, 3000)
    ends, probs = frame_probs(live_server, x)
    label = int(np.argmax(probs.std(0)))  # the label that moves most
    thr = threshold_between(probs[:, label])
    hyst = min(0.01, thr / 2)
    override = {"threshold": thr, "hysteresis": hyst, "holdoff_ms": 40,
                "background": [c for i, c in enumerate(CLASSES) if i != label]}
    cfg = EventsConfig(**override)
    expected = detect(CLASSES, DetectorSettings.from_config(cfg, CLASSES, RATE), ends, probs)
    assert expected, "the test signal must cross the threshold"
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url(MODEL), x, sizes=[700, 13, 4000],
        start={"sample_rate": RATE, "events": override}))
    assert res.close_code == 1000, res.messages
    assert res.started["events"]["holdoff_samples"] == 80
    got = events_of(res)
    assert [(e["label"], e["offset"]) for e in got] == [(e["label"], e["offset"]) for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert abs(g["probability"] - e["probability"]) <= 1e-4
        assert g["session_id"] == res.started["session_id"] and g["probability"] >= thr
    # every event comes after the result of its frame and before final
    types = [(m["type"], m.get("offset")) for m in res.messages]
    for e in got:
        assert types.index(("result", e["offset"])) < types.index(("event", e["offset"]))
    assert types[-1][0] == "final"


def test_events_default_from_the_model_and_can_be_turned_off(live_server, ws_client):
    x = signal(3, 400)
    res = asyncio.run(ws_client.stream_signal(live_server.ws_url(MODEL), x,
                                              start={"sample_rate": RATE}))
    assert res.started["events"] == {"threshold": 0.8, "off_threshold": pytest.approx(0.6),
                                     "holdoff_samples": 1000, "min_on_samples": 0,
                                     "onset_lag_samples": 0, "label_thresholds": {},
                                     "background": ["unknown"], "changes_only": False}
    meta = httpx.get(f"{live_server.base_url}/v1/models/{MODEL}").json()
    assert meta["events"] == {"enabled": True, "threshold": 0.8, "hysteresis": 0.2,
                              "holdoff_ms": 500.0, "min_on_ms": 0.0, "onset_lag_ms": 0.0,
                              "label_thresholds": None, "background": ["unknown"],
                              "changes_only": False}
    assert meta["pooling"] == "ema"
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url(MODEL), x,
        start={"sample_rate": RATE, "events": {"threshold": 0.01, "hysteresis": 0.0}}))
    assert events_of(res), "every label is above 1 %: events at the first frame"
    assert events_of(res)[0]["offset"] == FRAME
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url(MODEL), x,
        start={"sample_rate": RATE, "events": False}))
    assert res.started["events"] is False and not events_of(res) and res.close_code == 1000


def test_min_on_events_equal_the_detector_and_predict(live_server, ws_client):
    """`min_on_ms`: the stream's events equal the detector's on the batch path's frames and
    POST /predict's events; runs of p >= threshold shorter than min_on raise nothing."""
    x, ends, probs, label, base = one_label_setup(live_server, 2)
    thr = base["threshold"]
    above = np.concatenate([[0], (probs[:, label] >= thr).astype(int), [0]])
    edges = np.flatnonzero(np.diff(above))
    runs = edges[1::2] - edges[::2]  # lengths (frames) of the runs of p >= threshold
    k = int(runs.max())  # only the longest runs hold long enough
    assert (runs < k).any(), runs
    hold = (k - 1) * FRAME  # the run's last frame ends (k - 1) frames after its onset frame
    override = dict(base, min_on_ms=hold * 1000 / RATE)
    settings = DetectorSettings.from_config(EventsConfig(**override), CLASSES, RATE)
    assert settings.min_on_samples == hold
    expected = detect(CLASSES, settings, ends, probs)
    plain = detect(CLASSES, DetectorSettings.from_config(EventsConfig(**base), CLASSES, RATE),
                   ends, probs)
    assert expected and len(expected) < len(plain), "some runs must be shorter than min_on"
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url(MODEL), x, sizes=[700, 13, 4000],
        start={"sample_rate": RATE, "events": override}))
    assert res.close_code == 1000, res.messages
    assert res.started["events"]["min_on_samples"] == hold
    got = events_of(res)
    assert [(e["label"], e["offset"]) for e in got] == [(e["label"], e["offset"]) for e in expected]
    # an event is sent once the label turned on: after the result of the frame min_on later
    types = [(m["type"], m.get("offset")) for m in res.messages]
    for e in got:
        assert types.index(("result", e["offset"] + hold)) < types.index(("event", e["offset"]))
    r = httpx.post(f"{live_server.base_url}/v1/models/{MODEL}/predict",
                   json={"inputs": [x[:, 0].tolist()], "events": override}, timeout=60)
    assert r.status_code == 200, r.text
    want = r.json()["predictions"][0]["events"]
    assert [(e["label"], e["offset"]) for e in want] == [(e["label"], e["offset"]) for e in got]


def test_changes_only_on_the_wire_and_in_predict(live_server, ws_client):
    """`changes_only`: the stream's events equal the detector's on the batch path's frames and
    POST /predict's; watching one label, only its first turn-on is a change."""
    x, ends, probs, label, base = one_label_setup(live_server, 2)  # several turn-ons
    override = dict(base, changes_only=True)
    settings = DetectorSettings.from_config(EventsConfig(**override), CLASSES, RATE)
    expected = detect(CLASSES, settings, ends, probs)
    plain = detect(CLASSES, DetectorSettings.from_config(EventsConfig(**base), CLASSES, RATE),
                   ends, probs)
    assert len(plain) > 1 and expected == plain[:1]
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url(MODEL), x, sizes=[700, 13, 4000],
        start={"sample_rate": RATE, "events": override}))
    assert res.close_code == 1000, res.messages
    assert res.started["events"]["changes_only"] is True
    got = [(e["label"], e["offset"]) for e in events_of(res)]
    assert got == [(e["label"], e["offset"]) for e in expected]
    r = httpx.post(f"{live_server.base_url}/v1/models/{MODEL}/predict",
                   json={"inputs": [x[:, 0].tolist()], "events": override}, timeout=60)
    assert r.status_code == 200, r.text
    assert [(e["label"], e["offset"]) for e in r.json()["predictions"][0]["events"]] == got


def test_onset_lag_moves_event_offsets_on_the_wire_and_in_predict(live_server, ws_client):
    """`onset_lag_ms`: the stream reports the events the detector without a lag raises, each
    offset moved that much earlier (not before 0), as POST /predict does; `started` echoes it."""
    x, ends, probs, _, base = one_label_setup(live_server, 4)
    lag_ms = 40.0  # 80 samples at 2 kHz: 2.5 frames
    plain = detect(CLASSES, DetectorSettings.from_config(EventsConfig(**base), CLASSES, RATE),
                   ends, probs)
    assert plain, "the test signal must cross the threshold"
    override = dict(base, onset_lag_ms=lag_ms)
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url(MODEL), x, sizes=[700, 13, 4000],
        start={"sample_rate": RATE, "events": override}))
    assert res.close_code == 1000, res.messages
    assert res.started["events"]["onset_lag_samples"] == 80
    got = [(e["label"], e["offset"]) for e in events_of(res)]
    assert got == [(e["label"], max(e["offset"] - 80, 0)) for e in plain]
    r = httpx.post(f"{live_server.base_url}/v1/models/{MODEL}/predict",
                   json={"inputs": [x[:, 0].tolist()], "events": override}, timeout=60)
    assert r.status_code == 200, r.text
    assert [(e["label"], e["offset"]) for e in r.json()["predictions"][0]["events"]] == got


def test_label_thresholds_on_the_wire_and_a_plain_threshold_replaces_them(live_server, ws_client):
    """Per-label thresholds from `start` (each label at its own) give the detector's events
    with those thresholds; `started` echoes them; and a model's per-label defaults give way to
    a client's plain `threshold`."""
    from types import SimpleNamespace

    from server.stream_events import resolve

    x = signal(5, 3000)
    ends, probs = frame_probs(live_server, x)
    thr = {c: threshold_between(probs[:, i]) for i, c in enumerate(CLASSES[:2])}
    base = {"threshold": min(thr.values()), "hysteresis": 0.005, "holdoff_ms": 0,
            "background": ["unknown"]}
    override = dict(base, label_thresholds=thr)
    settings = DetectorSettings.from_config(EventsConfig(**override), CLASSES, RATE)
    expected = detect(CLASSES, settings, ends, probs)
    assert {e["label"] for e in expected} == {"yes", "no"}, "both labels must cross"
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url(MODEL), x, sizes=[700, 13, 4000],
        start={"sample_rate": RATE, "events": override}))
    assert res.close_code == 1000, res.messages
    assert res.started["events"]["label_thresholds"] == thr
    assert [(e["label"], e["offset"]) for e in events_of(res)] == [
        (e["label"], e["offset"]) for e in expected]
    meta = SimpleNamespace(events=dict(base, enabled=True, label_thresholds={"yes": 0.9}),
                           classes=CLASSES, sample_rate=RATE)
    assert resolve(None, meta).label_on == ((0, 0.9),)
    assert resolve({"holdoff_ms": 10}, meta).label_on == ((0, 0.9),)
    assert resolve({"threshold": 0.5}, meta).label_on == ()  # one threshold for every label
    assert resolve({"threshold": 0.5, "label_thresholds": {"no": 0.7}}, meta).label_on == (
        (1, 0.7),)


@pytest.mark.parametrize("events,needle", [
    ("yes", "true, false or an object"),
    ({"min_on_ms": -5}, "min_on_ms"),
    ({"min_on_ms": "long"}, "events.min_on_ms must be a number"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": "0.5"}, "events.threshold must be a number"),
    ({"threshold": 0.5, "hysteresis": 0.6}, "hysteresis"),
    ({"holdoff_ms": -1}, "holdoff_ms"),
    ({"background": ["maybe"]}, "unknown classes"),
    ({"background": "yes"}, "list of class names"),
    ({"window": 3}, "unknown field"),
    ({"onset_lag_ms": -20}, "onset_lag_ms"),
    ({"label_thresholds": {"maybe": 0.5}}, "not labels that raise events"),
    ({"label_thresholds": {"unknown": 0.5}}, "not labels that raise events"),
    ({"label_thresholds": {"yes": "high"}}, "object of label: number"),
    ({"label_thresholds": [0.5]}, "object of label: number"),
    ({"label_thresholds": {"yes": 0.1}}, "hysteresis"),
    ({"onset_lag_ms": "soon"}, "events.onset_lag_ms must be a number"),
    ({"changes_only": "yes"}, "events.changes_only must be true or false"),
    ({"changes_only": 1}, "events.changes_only must be true or false"),
])
def test_bad_event_settings_are_bad_start(live_server, ws_client, events, needle):
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url(MODEL), signal(0, 10),
        start={"sample_rate": RATE, "events": events}))
    assert res.error is not None and res.error["code"] == "bad_start", res.messages
    assert needle in res.error["message"] and res.close_code == 1003


def test_python_client_and_cli_report_events(live_server, tmp_path):
    """clients/: `events` in start, `on_event` callback and `session.events`; `s4d stream`
    prints them (JSON lines with --json)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from clients import S4DClient

    x = signal(1, 3000)
    ends, probs = frame_probs(live_server, x)
    override = {"threshold": 0.2, "hysteresis": 0.05, "holdoff_ms": 100, "background": []}
    expected = detect(CLASSES, DetectorSettings.from_config(EventsConfig(**override), CLASSES,
                                                            RATE), ends, probs)
    assert expected
    seen = []
    with S4DClient(live_server.base_url, timeout=30) as c:
        with c.stream(MODEL, sample_rate=RATE, encoding="f32le", events=override,
                      on_event=seen.append) as s:
            s.send(x)
            s.end()
        got = s.events
    assert [(e["label"], e["offset"]) for e in got] == [(e["label"], e["offset"]) for e in expected]
    assert seen == got
    np.save(tmp_path / "x.npy", x)
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "s4d_cli", "stream", "--url", live_server.base_url,
                        "--model", MODEL, str(tmp_path / "x.npy"), "--json",
                        "--events", json.dumps(override)],
                       cwd=root, timeout=60, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    ev = [(m["label"], m["offset"]) for m in lines if m["type"] == "event"]
    assert ev == [(e["label"], e["offset"]) for e in expected]
    r = subprocess.run([sys.executable, "-m", "s4d_cli", "stream", "--url", live_server.base_url,
                        "--model", MODEL, str(tmp_path / "x.npy"), "--events",
                        json.dumps(override)],
                       cwd=root, timeout=60, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sum(ln.startswith("event ") for ln in r.stdout.splitlines()) == len(expected)


def test_predict_events_equal_stream_events_for_per_step_models(live_server, ws_client):
    """POST /predict with "events" (pooling none) reports what the stream reports."""
    x = signal(2, 1000)
    rate = 250
    r = httpx.post(f"{live_server.base_url}/v1/models/tinynone/predict",
                   json={"inputs": [x[:, 0].tolist()], "per_step": True}, timeout=60)
    steps = np.array(r.json()["predictions"][0]["per_step"])
    ends = frame_ends(len(x), 16, 1)
    thr = threshold_between(steps[[e - 1 for e in ends], 0])
    override = {"threshold": thr, "hysteresis": min(0.01, thr / 2), "holdoff_ms": 100,
                "background": ["q"]}
    r = httpx.post(f"{live_server.base_url}/v1/models/tinynone/predict",
                   json={"inputs": [x[:, 0].tolist(), x[:555, 0].tolist()], "events": override},
                   timeout=60)
    assert r.status_code == 200, r.text
    batch = [p["events"] for p in r.json()["predictions"]]
    assert batch[0], "the test signal must cross the threshold"
    for seq, want in zip([x, x[:555]], batch, strict=True):
        res = asyncio.run(ws_client.stream_signal(
            live_server.ws_url("tinynone"), seq, sizes=[333, 40],
            start={"sample_rate": rate, "events": override}))
        got = events_of(res)
        assert [(e["label"], e["offset"]) for e in got] == [(e["label"], e["offset"]) for e in want]
        assert all(abs(g["probability"] - w["probability"]) <= 1e-5 for g, w in zip(got, want))
    # bad settings: a clear 400
    for model, body, needle in [
        ("tinynone", {"inputs": [[0.0] * 64], "events": {"threshold": 2}}, "threshold"),
        ("tinynone", {"inputs": [[0.0] * 64], "events": "yes"}, "true, false or an object"),
    ]:
        r = httpx.post(f"{live_server.base_url}/v1/models/{model}/predict", json=body)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    r = httpx.post(f"{live_server.base_url}/v1/models/tinynone/predict",
                   json={"inputs": [[0.0] * 64]})
    assert "events" not in r.json()["predictions"][0]


@pytest.mark.parametrize("seed", [4, 5])
def test_predict_events_equal_stream_events_for_pooled_models(live_server, ws_client, seed):
    """POST /predict with "events" on an ema-pooled model: the batch path's prediction after
    every frame end (one FFT forward) gives the events the WebSocket stream reports."""
    x = signal(seed, 2500)
    ends, probs = frame_probs(live_server, x)  # predictions of every prefix, one by one
    label = int(np.argmax(probs.std(0)))
    thr = threshold_between(probs[:, label])
    override = {"threshold": thr, "hysteresis": min(0.01, thr / 2), "holdoff_ms": 40,
                "background": [c for i, c in enumerate(CLASSES) if i != label]}
    r = httpx.post(f"{live_server.base_url}/v1/models/{MODEL}/predict",
                   json={"inputs": [x[:, 0].tolist(), x[:1001, 0].tolist()], "events": override},
                   timeout=60)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert preds[0]["events"], "the test signal must cross the threshold"
    # the prediction itself is the whole recording's, as without events
    plain = httpx.post(f"{live_server.base_url}/v1/models/{MODEL}/predict",
                       json={"inputs": [x[:, 0].tolist()]}, timeout=60).json()["predictions"][0]
    assert plain["label"] == preds[0]["label"]
    for c in CLASSES:
        assert abs(plain["probabilities"][c] - preds[0]["probabilities"][c]) <= 1e-5
    for seq, pred in zip([x, x[:1001]], preds, strict=True):
        res = asyncio.run(ws_client.stream_signal(
            live_server.ws_url(MODEL), seq, sizes=[500, 77],
            start={"sample_rate": RATE, "events": override}))
        assert res.close_code == 1000, res.messages
        got, want = events_of(res), pred["events"]
        assert [(e["label"], e["offset"]) for e in got] == [(e["label"], e["offset"]) for e in want]
        assert all(abs(g["probability"] - w["probability"]) <= 1e-4 for g, w in zip(got, want))
