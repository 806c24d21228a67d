"""The /v1 routers on a real server: pydantic-validated JSON bodies (codes as PROTOCOL.md says),
multipart uploads parsed off the event loop with their limits, the OpenAPI document built from
the models, and model metadata filtered by the caller's API key without telling a key which
other models exist."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import pytest

from server.auth import key_line, new_key

ALICE, BOB = new_key(), new_key()


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("body,code,needle", [
    ({"inputs": [[0.0] * 8], "per_step": "yes"}, "bad_request", "per_step"),
    ({"inputs": [[0.0] * 8], "sample_rate": "16000"}, "bad_request", "sample_rate"),
    ({"inputs": [[0.0] * 8], "sample_rate": True}, "bad_request", "sample_rate"),
    ({"inputs": []}, "bad_request", "inputs"),
    ({"inputs": "0.5"}, "bad_request", "inputs"),
    ({"inputs": [0.5, 0.25]}, "bad_input", "inputs.0"),  # a sequence, not a sample, per item
    ({"inputs": [[0.0] * 8], "events": {"threshold": "x"}}, "bad_request", "threshold"),
    ({"inputs": [[0.0] * 8], "events": {"nope": 1}}, "bad_request", "nope"),
    ([[0.0] * 8], "bad_request", "object"),
])
def test_json_body_validation(live_server, body, code, needle):
    r = httpx.post(f"{live_server.base_url}/v1/models/tiny/predict", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code and needle in err["message"], err


def test_json_events_object_and_per_step(live_server):
    x = np.random.default_rng(1).standard_normal(64).astype(np.float32).tolist()
    r = httpx.post(f"{live_server.base_url}/v1/models/tinynone/predict", timeout=30,
                   json={"inputs": [x], "per_step": True,
                         "events": {"threshold": 0.5, "background": []}})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    steps = np.array(pred["per_step"])
    assert steps.shape == (64, 2) and np.allclose(steps.sum(1), 1, atol=1e-5)
    assert isinstance(pred["events"], list)
    assert pred["probabilities"] == pytest.approx(dict(zip(["p", "q"], steps[-1])), abs=1e-6)


def _csv(n: int, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    return "\n".join(f"{v:.6f}" for v in x).encode(), x


def test_multipart_uploads(live_server):
    url = f"{live_server.base_url}/v1/models/tiny/predict"
    (a, xa), (_, xb) = _csv(300, 1), _csv(500, 2)
    npy = io.BytesIO()
    np.save(npy, xb)
    r = httpx.post(url, files=[("file", ("a.csv", a, "text/csv")),
                               ("file", ("b.bin", npy.getvalue(), "application/x-npy"))],
                   timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["num_samples"] for p in preds] == [300, 500]
    same = httpx.post(url, json={"inputs": [xa.tolist(), xb.tolist()]}, timeout=30).json()
    for p, q in zip(preds, same["predictions"], strict=True):
        assert p["probabilities"] == pytest.approx(q["probabilities"], abs=1e-5)
    # per_step as a form field (tinynone has per-step outputs)
    r = httpx.post(f"{live_server.base_url}/v1/models/tinynone/predict", data={"per_step": "true"},
                   files=[("file", ("a.csv", a, "text/csv"))], timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"][0]["per_step"]) == 300


@pytest.mark.parametrize("make,status,code", [
    (lambda: dict(files=[("file", ("x.png", b"png", "image/png"))]), 415, "unsupported_media_type"),
    (lambda: dict(files=[("other", ("a.csv", b"1\n2\n", "text/csv"))]), 400, "bad_request"),
    (lambda: dict(files=[("file", (f"{i}.csv", b"1\n2\n", "text/csv")) for i in range(65)]),
     413, "too_large"),
    (lambda: dict(data={"per_step": "x" * 70_000}, files=[("file", ("a.csv", b"1\n", "text/csv"))]),
     400, "bad_request"),
    (lambda: dict(content=b"--XX\r\nContent-Disposition: form-data; name=\"file\"; "
                  b"filename=\"a.csv\"\r\n\r\n1\n2\n",  # no closing boundary
                  headers={"content-type": "multipart/form-data; boundary=XX"}),
     400, "bad_request"),
    (lambda: dict(content=b"garbage", headers={"content-type": "multipart/form-data"}),
     400, "bad_request"),
])
def test_multipart_errors(live_server, make, status, code):
    r = httpx.post(f"{live_server.base_url}/v1/models/tiny/predict", timeout=30, **make())
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_big_multipart_is_parsed_off_the_event_loop(live_server):
    """~30 MB of form parts: /healthz keeps answering while the body is parsed. The first
    file's type is refused after the whole body is parsed, so no model work follows."""
    part = b"0\n" * 240_000  # 480 KB of CSV per file
    files = [("file", ("x.png", b"png", "image/png"))]
    files += [("file", (f"{i}.csv", part, "text/csv")) for i in range(62)]

    async def main():
        async with httpx.AsyncClient(base_url=live_server.base_url, timeout=120) as c:
            post = asyncio.ensure_future(c.post("/v1/models/tiny/predict", files=files))
            worst = 0.0
            while not post.done():
                t0 = time.perf_counter()
                assert (await c.get("/healthz")).status_code == 200
                worst = max(worst, time.perf_counter() - t0)
                await asyncio.sleep(0.02)
            return await post, worst

    r, worst = asyncio.run(main())
    assert r.status_code == 415, r.text[:300]
    assert r.json()["error"]["code"] == "unsupported_media_type"
    assert worst < 1.0, worst


def test_openapi_comes_from_the_models(live_server):
    doc = httpx.get(f"{live_server.base_url}/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    for name in ("PredictJson", "PredictMultipart", "EventsOverride", "PredictResponse",
                 "ModelMeta", "ErrorBody"):
        assert name in schemas, name
    assert "HTTPValidationError" not in schemas
    body = doc["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictJson"}
    assert {"audio/wav", "text/csv", "application/x-npy", "multipart/form-data"} <= set(body)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "422" not in op.get("responses", {}), (method, path)  # validation is 400
    err = doc["paths"]["/v1/models/{name}"]["get"]["responses"]["404"]
    assert err["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture(scope="module")
def keyed(start_server, checkpoint_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("router-keys") / "keys.txt"
    keys.write_text(key_line("alice", ALICE) + "\n"
                    + key_line("bob", BOB, models=["tiny2", "ghost"]) + "\n")
    return start_server(checkpoints=checkpoint_dir, models="tiny,tiny2,tinynone",
                        api_keys_file=keys)


def test_models_are_listed_per_key(keyed):
    c = keyed.client()
    everything = c.get("/v1/models", headers=_auth(ALICE)).json()["models"]
    assert sorted(m["name"] for m in everything) == ["tiny", "tiny2", "tinynone"]
    mine = c.get("/v1/models", headers=_auth(BOB)).json()["models"]
    assert [m["name"] for m in mine] == ["tiny2"]
    # /readyz stays open; it names only the models of the key it was given
    assert c.get("/readyz").json() == {"status": "ready", "models": []}
    assert c.get("/readyz", headers=_auth(BOB)).json()["models"] == ["tiny2"]
    assert sorted(c.get("/readyz", headers=_auth(ALICE)).json()["models"]) == \
        ["tiny", "tiny2", "tinynone"]


def test_oip_model_lists_are_per_key_too(keyed):
    """Triton's repository index and statistics list only the key's models (not a 403 for
    `stats`, which is no model name)."""
    c = keyed.client()
    index = c.post("/v2/repository/index", headers=_auth(BOB), json={})
    assert index.status_code == 200, index.text
    assert [m["name"] for m in index.json()] == ["tiny2"]
    stats = c.get("/v2/models/stats", headers=_auth(BOB))
    assert stats.status_code == 200, stats.text
    assert [m["name"] for m in stats.json()["model_stats"]] == ["tiny2"]
    everything = c.post("/v2/repository/index", headers=_auth(ALICE), json={}).json()
    assert sorted(m["name"] for m in everything) == ["tiny", "tiny2", "tinynone"]
    assert c.get("/v2/models/tiny/stats", headers=_auth(BOB)).status_code == 403


def test_forbidden_and_unknown_models_look_the_same_to_a_restricted_key(keyed):
    """A served model outside bob's list and a name nobody serves answer alike (403, the same
    message up to the name), so bob cannot probe which models exist; a name in his list that
    is not served is 404."""
    c = keyed.client()
    shapes = []
    for name in ("tiny", "no-such-model"):
        for method, path, kw in (("GET", f"/v1/models/{name}", {}),
                                 ("POST", f"/v1/models/{name}/predict",
                                  {"json": {"inputs": [[0.0] * 8]}})):
            r = c.request(method, path, headers=_auth(BOB), **kw)
            assert r.status_code == 403, (path, r.text)
            err = r.json()["error"]
            shapes.append((method, err["code"], err["message"].replace(name, "NAME")))
    assert shapes[:2] == shapes[2:]
    r = c.get("/v1/models/ghost", headers=_auth(BOB))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
    assert c.get("/v1/models/tiny2", headers=_auth(BOB)).json()["name"] == "tiny2"


def test_session_ids_stay_out_of_info_logs(start_server, checkpoint_dir):
    """uvicorn's access and WebSocket lines show a session id only as its short hash."""
    import json
    import logging

    import websockets

    from server.logredact import LOGGERS, short_id

    srv = start_server(checkpoints=checkpoint_dir, models="tiny", log_level="info")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    keep = Keep()
    for name in LOGGERS:
        logging.getLogger(name).addHandler(keep)
    start = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1}
    try:
        async def main():
            async with websockets.connect(srv.ws_url("tiny")) as ws:
                await ws.send(json.dumps(start))
                sid = json.loads(await ws.recv())["session_id"]
            async with websockets.connect(f"{srv.ws_url('tiny')}?session_id={sid}") as ws:
                await ws.send(json.dumps({**start, "session_id": sid}))
                assert json.loads(await ws.recv())["type"] == "started"
            return sid

        sid = asyncio.run(main())
        assert httpx.get(f"{srv.base_url}/v1/sessions/{sid}/snapshot", timeout=30).status_code == 200
        time.sleep(0.2)
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(keep)
    text = "\n".join(lines)
    assert f"session_id=~{short_id(sid)}" in text and f"/v1/sessions/~{short_id(sid)}" in text
    assert sid not in text


def test_closed_docs_and_metrics_without_keys_are_off(start_server, checkpoint_dir):
    """`public_docs=false` / `public_metrics=false` with no keys file to open them: off (404),
    not silently open."""
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", public_docs=False,
                       public_metrics=False)
    c = srv.client()
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
        r = c.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    assert c.get("/healthz").status_code == 200
    assert c.get("/v1/models").status_code == 200
