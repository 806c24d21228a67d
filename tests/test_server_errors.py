"""Every bad input of PROTOCOL.md's table gets its error code and close code, while a healthy
session on the same server finishes with the exact result."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

START = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1}


async def _expect_error(ws, timeout=10.0):
    """Messages until close; returns (last error message, close code)."""
    err = None
    try:
        while True:
            raw = await asyncio.wait_for(ws.recv(), timeout)
            msg = json.loads(raw)
            if msg.get("type") == "error":
                err = msg
    except websockets.ConnectionClosed as exc:
        return err, exc.rcvd.code if exc.rcvd else None


async def _scenario(url_of, steps):
    """steps: a list of JSON-able dicts (sent as text), str (sent raw), or bytes."""
    model = "tiny"
    if steps and isinstance(steps[0], tuple):
        model, steps = steps[0][1], steps[1:]
    async with websockets.connect(url_of(model), max_size=None) as ws:
        for item in steps:
            try:
                await ws.send(json.dumps(item) if isinstance(item, dict) else item)
            except websockets.ConnectionClosed:
                break  # the server already refused; its error is still buffered
            if isinstance(item, dict) and item.get("type") == "start":
                first = json.loads(await ws.recv())
                if first["type"] == "error":
                    return first, await _close_code(ws)
        return await _expect_error(ws)


async def _close_code(ws):
    try:
        await asyncio.wait_for(ws.recv(), 10)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    return None


NAN = np.array([0.1, np.nan], "<f4").tobytes()

CASES = {
    "bad_json": ([START, "not json"], 1003),
    "bad_json_before_start": (["[1, 2]"], 1003, "bad_json"),
    "unknown_type": ([START, {"type": "pause"}], 1003),
    "unknown_type_missing": ([{"sample_rate": 16000}], 1003, "unknown_type"),
    "not_started": ([b"\x00\x00\x00\x00"], 1008),
    "not_started_end": ([{"type": "end"}], 1008, "not_started"),
    "not_started_reset": ([{"type": "reset"}], 1008, "not_started"),
    "already_started": ([START, START], 1008),
    "bad_start": ([{**START, "sample_rate": "16k"}], 1003),
    "bad_start_missing": ([{"type": "start", "encoding": "f32le", "channels": 1}], 1003,
                          "bad_start"),
    "bad_start_emit": ([{**START, "emit_every": -1}], 1003, "bad_start"),
    "bad_start_offset": ([{**START, "offset": 5}], 1003, "bad_start"),
    "bad_encoding": ([{**START, "encoding": "mulaw"}], 1003),
    "bad_sample_rate": ([{**START, "sample_rate": 8000}], 1003),
    "bad_channels": ([{**START, "channels": 2}], 1003),
    "non_finite": ([START, NAN], 1003),
    "partial_sample": ([START, b"\x00" * 7, {"type": "end"}], 1003),
    "too_big": ([START, b"\x00" * ((1 << 20) + 4)], 1009),
    # the limit counts bytes: 2**19 + 1 two-byte characters are under it in characters
    "too_big_text": ([START, "\u00e9" * ((1 << 19) + 1)], 1009, "too_big"),
    "partial_sample_reset": ([START, b"\x00" * 7, {"type": "reset"}], 1003, "partial_sample"),
    "unknown_model": ([("model", "nope"), START], 1008),
    "not_streamable": ([("model", "tinybi"), START], 1008),
    "unknown_session": ([{**START, "session_id": "deadbeef", "offset": 0}], 1008),
}


async def _healthy(url, x, probs_out):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "emit_every": 0}))
        assert json.loads(await ws.recv())["type"] == "started"
        data = x.astype("<f4").tobytes()
        for i in range(0, len(data), 400):
            await ws.send(data[i : i + 400])
            await asyncio.sleep(0.002)
        await ws.send(json.dumps({"type": "end"}))
        msgs = []
        try:
            while True:
                msgs.append(json.loads(await ws.recv()))
        except websockets.ConnectionClosed as exc:
            probs_out.append((msgs, exc.rcvd.code))


async def _busy_and_gap(url):
    """session_busy (attached elsewhere) and offset_gap (offset beyond what is held)."""
    out = {}
    async with websockets.connect(url) as a:
        await a.send(json.dumps(START))
        sid = json.loads(await a.recv())["session_id"]
        await a.send(np.zeros(10, "<f4").tobytes())
        async with websockets.connect(url) as b:
            await b.send(json.dumps({**START, "session_id": sid, "offset": 0}))
            out["session_busy"] = (json.loads(await b.recv()), await _close_code(b))
    for _ in range(200):
        async with websockets.connect(url) as c:
            await c.send(json.dumps({**START, "session_id": sid, "offset": 1000}))
            msg = json.loads(await c.recv())
            code = await _close_code(c)
        if msg.get("code") != "session_busy":
            break
        await asyncio.sleep(0.02)
    out["offset_gap"] = (msg, code)
    return out


def test_every_protocol_error(live_server, batch_predict, probs_close):
    x = (np.random.default_rng(7).standard_normal(3000) * 0.2).astype(np.float32)

    async def main():
        healthy: list = []
        task = asyncio.ensure_future(_healthy(live_server.ws_url("tiny"), x, healthy))
        outcomes = await asyncio.gather(
            *(_scenario(live_server.ws_url, case[0]) for case in CASES.values()))
        extra = await _busy_and_gap(live_server.ws_url("tiny"))
        await task
        return dict(zip(CASES, outcomes, strict=True)), extra, healthy

    outcomes, extra, healthy = asyncio.run(main())
    for name, case in CASES.items():
        code = case[2] if len(case) > 2 else name
        err, close = outcomes[name]
        assert err is not None, f"{name}: no error message"
        assert err["code"] == code, (name, err)
        assert isinstance(err["message"], str) and err["message"]
        assert close == case[1], (name, close, err)
    assert extra["session_busy"][0]["code"] == "session_busy" and extra["session_busy"][1] == 1008
    assert extra["offset_gap"][0]["code"] == "offset_gap" and extra["offset_gap"][1] == 1008

    msgs, close = healthy[0]
    assert close == 1000 and msgs[-1]["type"] == "final" and msgs[-1]["offset"] == 3000
    probs_close(msgs[-1]["probabilities"], batch_predict(live_server, "tiny", [x[:, None]])[0])
    text = live_server.metrics_text()
    for code in ("bad_json", "not_started", "too_big", "non_finite", "partial_sample"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f's4d_errors_total{{code="{code}"}}'))
        assert float(line.split()[-1]) >= 1


def test_internal_error_is_contained(start_server, checkpoint_dir):
    srv = start_server(checkpoints=checkpoint_dir, models="tiny,tiny2")
    engine = srv.server._s4d_app.state.s4d.engine  # the in-process engine (--workers 0)
    backend = engine.by_name["tiny"].backend

    def boom(storage, slots, frames):
        raise RuntimeError("injected failure")

    backend.step_slots = boom  # what the engine calls (on CUDA it never calls `step`)

    async def main():
        async with websockets.connect(srv.ws_url("tiny")) as ws:
            await ws.send(json.dumps(START))
            await ws.recv()
            await ws.send(np.zeros(200, "<f4").tobytes())
            return await _expect_error(ws)

    err, close = asyncio.run(main())
    assert err["code"] == "internal" and close == 1011
    # the server and other models keep working
    r = httpx.post(f"{srv.base_url}/v1/models/tiny2/predict", json={"inputs": [[[0.0, 1.0]] * 4]})
    assert r.status_code == 200
    assert engine.by_name["tiny"].slab.in_use == 0


@pytest.mark.parametrize(
    "kwargs,status,code",
    [
        (dict(content=b'{"inputs": [[NaN, 1.0]]}', headers={"content-type": "application/json"}),
         400, "non_finite"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400,
         "bad_request"),
        (dict(json={"nope": 1}), 400, "bad_request"),
        (dict(json={"inputs": [[]]}), 400, "bad_input"),
        (dict(json={"inputs": [["a", "b"]]}), 400, "bad_input"),
        (dict(json={"inputs": [[[1.0, 2.0]]]}), 400, "bad_channels"),
        (dict(json={"inputs": [[0.0]], "sample_rate": 8000}), 400, "bad_sample_rate"),
        (dict(json={"inputs": [[0.0]] * 65}), 413, "too_large"),
        (dict(content=b"x" * 10, headers={"content-type": "image/png"}), 415,
         "unsupported_media_type"),
        (dict(content=b"RIFF....garbage", headers={"content-type": "audio/wav"}), 400,
         "bad_input"),
        (dict(content=b"a,b\n1,x\n", headers={"content-type": "text/csv"}), 400, "bad_input"),
    ],
)
def test_rest_errors(live_server, kwargs, status, code):
    r = httpx.post(f"{live_server.base_url}/v1/models/tiny/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_http_error_shapes(live_server):
    c = live_server.client()
    for path, status, code in [("/v1/models/nope", 404, "unknown_model"),
                               ("/no/such/route", 404, "not_found")]:
        r = c.get(path)
        assert r.status_code == status and r.json()["error"]["code"] == code
    # OIP v2 paths answer OIP's {"error": "<message>"} (tests/test_oip.py covers them all)
    r = c.get("/v2/models/nope/ready")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = c.post("/v1/models/nope/predict", json={"inputs": [[0.0]]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
    r = c.delete("/v1/models/tiny")
    assert r.status_code == 405 and "error" in r.json()


def test_body_limit(start_server, checkpoint_dir):
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", max_body_bytes=4096)
    r = httpx.post(f"{srv.base_url}/v1/models/tiny/predict",
                   json={"inputs": [[0.1] * 2000]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_start_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["start", "end", "reset", "x"])},
    optional={"sample_rate": st.sampled_from([16000, 8000, "a", -1, None]),
              "encoding": st.sampled_from(["f32le", "pcm_s16le", "mp3", 3]),
              "channels": st.sampled_from([1, 2, 0, "1"]),
              "emit_every": st.sampled_from([0, 64, -5, 1.5]),
              "session_id": st.sampled_from(["abc", "", 7]),
              "offset": st.sampled_from([0, 10, -1])},
)
_message = st.one_of(st.binary(max_size=64), _start_like, _json_values.map(json.dumps),
                     st.text(max_size=20))


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_message, min_size=1, max_size=6))
def test_fuzzed_clients_get_documented_codes(live_server, messages):
    from server.errors import WS_CLOSE_CODES

    async def main():
        async with websockets.connect(live_server.ws_url("tiny")) as ws:
            for m in messages:
                try:
                    await ws.send(json.dumps(m) if isinstance(m, dict) else m)
                except websockets.ConnectionClosed:
                    break
            try:
                await ws.send(json.dumps({"type": "end"}))
            except websockets.ConnectionClosed:
                pass
            msgs, code = [], None
            try:
                while True:
                    msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
            return msgs, code

    msgs, code = asyncio.run(main())
    errors = [m for m in msgs if m["type"] == "error"]
    if errors:
        assert len(errors) == 1 and code == WS_CLOSE_CODES[errors[0]["code"]], (msgs, code)
    else:
        assert code == 1000 and msgs[-1]["type"] == "final", (msgs, code)
    assert httpx.get(f"{live_server.base_url}/healthz").status_code == 200
