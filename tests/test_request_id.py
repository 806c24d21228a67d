"""X-Request-ID on a real server (server/request_id.py): every HTTP answer carries one, the
client's when it is a plain token, a fresh one otherwise; error bodies and the log line of a
failure inside the server carry the same id."""

from __future__ import annotations

import logging
import re

import pytest


@pytest.fixture(scope="module")
def server(start_server, checkpoint_dir):
    srv = start_server(checkpoints=checkpoint_dir, models="tiny")

    async def boom():  # a failure inside the server: the 500 path answers outside middleware
        raise RuntimeError("boom")

    srv.server.config.app.add_api_route("/test-boom", boom)
    return srv


def test_every_answer_carries_a_fresh_id(server):
    with server.client() as c:
        ids = {c.get("/healthz").headers["x-request-id"] for _ in range(3)}
        assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
        r = c.post("/v1/models/tiny/predict", json={"inputs": [[0.1] * 200]})
        assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_a_clients_id_comes_back_in_the_header_and_the_error_body(server):
    rid = "lb-7f3a.42:retry/1=x"
    with server.client() as c:
        r = c.get("/v1/models/nope", headers={"X-Request-ID": rid})
        assert r.status_code == 404
        assert r.headers["x-request-id"] == rid
        assert r.json()["error"] == {"code": "unknown_model", "message": r.json()["error"]["message"],
                                     "request_id": rid}
        bad = c.post("/v1/models/tiny/predict", json={"inputs": "x"}, headers={"x-request-id": rid})
        assert bad.status_code == 400 and bad.json()["error"]["request_id"] == rid


@pytest.mark.parametrize("sent", ["has space", "a" * 129, "x\u00e9", "semi;colon", ""])
def test_a_malformed_id_is_replaced_never_echoed(server, sent):
    with server.client() as c:
        r = c.get("/healthz", headers={"x-request-id": sent.encode("utf-8")})
    assert r.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_access_checks_answer_with_the_id(server):
    """The Host check runs before any route: its 400 carries the id too."""
    with server.client() as c:
        r = c.get("/v1/models", headers={"host": "evil.example", "x-request-id": "abc-1"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_host"
    assert r.headers["x-request-id"] == "abc-1" and r.json()["error"]["request_id"] == "abc-1"


def test_a_failure_inside_the_server_logs_and_answers_the_id(server, caplog):
    with caplog.at_level(logging.ERROR, logger="s4d"), server.client() as c:
        r = c.get("/test-boom", headers={"x-request-id": "trace-500"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "trace-500"
    assert r.json()["error"] == {"code": "internal", "message": "RuntimeError",
                                 "request_id": "trace-500"}
    assert any("trace-500" in rec.getMessage() for rec in caplog.records)


def test_the_client_library_reports_the_id_of_a_failed_call(server):
    from clients.client import S4DClient
    from clients.errors import S4DError

    with S4DClient(server.base_url) as client, pytest.raises(S4DError) as info:
        client.predict("nope", [[0.0] * 100], sample_rate=16000)
    err = info.value
    assert err.code == "unknown_model" and err.status == 404
    assert re.fullmatch(r"[0-9a-f]{32}", err.request_id)
    assert f"request {err.request_id}" in str(err)
