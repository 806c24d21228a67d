"""`--log-format json` on a real server process (one process, and a supervisor with a
front-end and an engine process): every line it writes is one JSON object, uvicorn's access
lines included, and a request's lines carry its X-Request-ID."""

from __future__ import annotations

import json

import httpx
import pytest

from bench.serve import ServerProcess


@pytest.mark.parametrize("workers", [0, 1])
def test_json_logs_are_one_object_per_line_with_request_ids(checkpoint_dir, tmp_path, workers):
    log_path = tmp_path / "server.log"
    server = ServerProcess(str(checkpoint_dir), "tiny", 8,
                           {"S4D_LOG_FORMAT": "json", "S4D_LOG_LEVEL": "info",
                            "S4D_WORKERS": str(workers)}, None, str(log_path))
    try:
        server.wait_ready(60)
        r = httpx.get(f"{server.url}/v1/models/nope", headers={"x-request-id": "json-test-1"})
        assert r.status_code == 404
        ok = httpx.post(f"{server.url}/v1/models/tiny/predict", json={"inputs": [[0.1] * 100]},
                        headers={"x-request-id": "json-test-2"})
        assert ok.status_code == 200
    finally:
        server.stop()
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    docs = []
    for line in lines:
        try:
            docs.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert all({"time", "level", "logger", "process", "message"} <= d.keys() for d in docs)
    access = [d for d in docs if d["logger"] == "uvicorn.access"]
    mine = {d["request_id"]: d["message"] for d in access if "request_id" in d}
    assert "GET /v1/models/nope" in mine.get("json-test-1", "") and "404" in mine["json-test-1"]
    assert "POST /v1/models/tiny/predict" in mine.get("json-test-2", "")
    assert any(d["logger"].startswith("s4d") for d in docs)  # the server's own lines too
    if workers:  # the supervisor, its front-end and its engine each wrote some
        assert len({d["process"] for d in docs}) >= 3
