"""Access control on a real server: API keys (REST + WebSocket, header or subprotocol), model
lists, open health routes, configurable /metrics and /docs, Origin checks, trusted hosts, CORS,
and `s4d keys add`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from server.auth import KeyInfo, key_line, new_key, parse_keys

START = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1}
ALICE, BOB = new_key(), new_key()


@pytest.fixture(scope="module")
def keyed(start_server, checkpoint_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("# test keys\n" + key_line("alice", ALICE) + "\n"
                    + key_line("bob", BOB, models=["tiny2"], max_sessions=2) + "\n")
    srv = start_server(checkpoints=checkpoint_dir, models="tiny,tiny2", api_keys_file=keys,
                       public_metrics=False, public_docs=False,
                       allowed_origins="http://app.example")
    srv.keys_file = keys
    return srv


def _auth(key):
    return {"Authorization": f"Bearer {key}"}


async def _stream(url, *, headers=None, subprotocols=None, origin=None, n=1000):
    """(first message, messages, close code, negotiated subprotocol)."""
    kw = {"additional_headers": headers, "subprotocols": subprotocols}
    if origin:
        kw["origin"] = origin
    async with websockets.connect(url, **kw) as ws:
        proto = ws.subprotocol
        try:
            await ws.send(json.dumps(START))
        except websockets.ConnectionClosed:
            pass  # refused right after the handshake; its error message is still buffered
        first = json.loads(await ws.recv())
        msgs = [first]
        if first["type"] == "started":
            await ws.send(np.zeros(n, "<f4").tobytes())
            await ws.send(json.dumps({"type": "end"}))
        try:
            while True:
                msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
        except websockets.ConnectionClosed as exc:
            return first, msgs, (exc.rcvd.code if exc.rcvd else None), proto


def test_rest_needs_a_valid_key(keyed):
    c = keyed.client()
    for path in ("/healthz", "/readyz", "/v2/health/live"):
        assert c.get(path).status_code == 200, path
    for headers in ({}, _auth("s4d_wrong"), {"Authorization": "Basic abc"}):
        r = c.get("/v1/models", headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert c.get("/v1/models", headers=_auth(ALICE)).status_code == 200
    r = c.post("/v1/models/tiny/predict", json={"inputs": [[0.0] * 10]}, headers=_auth(ALICE))
    assert r.status_code == 200, r.text
    # bob may use tiny2 only, on /v1 and /v2 paths
    r = c.post("/v1/models/tiny/predict", json={"inputs": [[0.0] * 10]}, headers=_auth(BOB))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert c.get("/v2/models/tiny", headers=_auth(BOB)).status_code == 403
    assert c.get("/v2/models/tiny2", headers=_auth(BOB)).status_code == 200
    r = c.post("/v1/models/tiny2/predict", json={"inputs": [[[0.0, 1.0]] * 4]},
               headers=_auth(BOB))
    assert r.status_code == 200, r.text


def test_metrics_and_docs_closed_when_configured(keyed, start_server, checkpoint_dir):
    c = keyed.client()
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert c.get(path).status_code == 401, path
        assert c.get(path, headers=_auth(ALICE)).status_code == 200, path
    text = c.get("/metrics", headers=_auth(ALICE)).text
    assert 's4d_auth_refused_total{reason="no_key"}' in text


def test_websocket_key_by_header_or_subprotocol(keyed):
    url = keyed.ws_url("tiny")

    async def main():
        return await asyncio.gather(
            _stream(url, headers=_auth(ALICE)),
            _stream(url, subprotocols=["s4d.v1", f"s4d.key.{ALICE}"]),
            _stream(url, subprotocols=[f"s4d.key.{ALICE}"]),
            _stream(url),
            _stream(url, subprotocols=["s4d.v1", "s4d.key.nope"]),
            _stream(url, headers=_auth(BOB)),
        )

    header, sub_v1, sub_only, none, wrong, bob = asyncio.run(main())
    for first, msgs, close, _ in (header, sub_v1, sub_only):
        assert first["type"] == "started" and msgs[-1]["type"] == "final", msgs
        assert close == 1000 and msgs[-1]["offset"] == 1000
    assert sub_v1[3] == "s4d.v1"  # the key is not echoed when s4d.v1 was offered
    assert sub_only[3] == f"s4d.key.{ALICE}"
    for first, _, close, _ in (none, wrong):
        assert first["type"] == "error" and first["code"] == "unauthorized" and close == 4401
    assert bob[0]["code"] == "forbidden" and bob[2] == 4403


def test_origin_checks(keyed, live_server):
    url = live_server.ws_url("tiny")  # no keys there: the Origin check stands alone
    port = live_server.base_url.rsplit(":", 1)[1]

    async def refused(origin):
        with pytest.raises(InvalidStatus) as exc:
            await _stream(url, origin=origin)
        return exc.value.response.status_code

    async def main():
        evil = await refused("http://evil.example")
        same = await _stream(url, origin=f"http://127.0.0.1:{port}")
        listed = await _stream(keyed.ws_url("tiny"), origin="http://app.example",
                               headers=_auth(ALICE))
        return evil, same, listed

    evil, same, listed = asyncio.run(main())
    assert evil == 403
    assert same[0]["type"] == "started" and same[2] == 1000
    assert listed[0]["type"] == "started" and listed[2] == 1000
    # a cross-site form post (no preflight) is refused before the body is read
    r = httpx.post(f"{live_server.base_url}/v1/models/tiny/predict", content=b"0\n" * 1000,
                   headers={"content-type": "text/csv", "origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    # CORS: the listed origin gets a preflight answer, others do not
    pre = {"access-control-request-method": "POST",
           "access-control-request-headers": "authorization,content-type"}
    c = keyed.client()
    ok = c.options("/v1/models/tiny/predict", headers={"origin": "http://app.example", **pre})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://app.example"
    bad = c.options("/v1/models/tiny/predict", headers={"origin": "http://evil.example", **pre})
    assert "access-control-allow-origin" not in bad.headers


def test_trusted_hosts(live_server):
    """Bound to 127.0.0.1: only loopback names are accepted as Host (DNS rebinding)."""
    r = httpx.get(f"{live_server.base_url}/v1/models", headers={"host": "rebind.evil.example"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_host", r.text
    port = live_server.base_url.rsplit(":", 1)[1]
    r = httpx.get(f"{live_server.base_url}/v1/models", headers={"host": f"localhost:{port}"})
    assert r.status_code == 200

    assert _raw_ws_handshake(live_server, "rebind.evil.example").startswith(b"HTTP/1.1 403")
    assert _raw_ws_handshake(live_server, f"127.0.0.1:{port}").startswith(b"HTTP/1.1 101")


def _raw_ws_handshake(srv, host: str) -> bytes:
    """The status line of a WebSocket handshake sent with this Host header (client libraries
    always send the URL's host)."""
    import socket

    port = int(srv.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /v1/models/tiny/stream HTTP/1.1\r\nHost: {host}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        return s.recv(4096).split(b"\r\n", 1)[0]


def test_keys_cli_and_reload(keyed):
    """`s4d keys add --file` appends a line the running server picks up without a restart."""
    out = subprocess.run([sys.executable, "s4d_cli.py", "keys", "add", "carol", "--models",
                          "tiny", "--max-sessions", "3", "--file", str(keyed.keys_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(ln.split(": ", 1) for ln in out.stdout.strip().splitlines())
    key = lines["key"]
    assert key not in keyed.keys_file.read_text()
    parsed = parse_keys(lines["line"])
    assert list(parsed.values()) == [KeyInfo("carol", frozenset({"tiny"}), 3)]
    import time

    time.sleep(1.2)  # the key store re-checks the file at most once a second
    c = keyed.client()
    assert c.get("/v1/models/tiny", headers=_auth(key)).status_code == 200
    assert c.get("/v1/models/tiny2", headers=_auth(key)).status_code == 403


def test_bad_keys_file_lines():
    with pytest.raises(ValueError, match="keys.txt:2"):
        parse_keys("a sha256:" + "0" * 64 + "\nb sha256:xyz\n", "keys.txt")
    with pytest.raises(ValueError, match="invalid option"):
        parse_keys("a sha256:" + "0" * 64 + " max_sessions=-1\n")


def test_key_info_reaches_the_scope():
    """The stream handler reads scope['s4d_key'] (name, models, max_sessions)."""
    import tempfile
    from pathlib import Path

    from server.auth import SCOPE_KEY, AccessMiddleware, KeyStore

    seen = {}

    async def app(scope, receive, send):
        seen["key"] = scope.get(SCOPE_KEY)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k"
        path.write_text(key_line("bob", BOB, models=["m"], max_sessions=2) + "\n")
        mw = AccessMiddleware(app, keys=KeyStore(path), allowed_origins=[])

        async def call():
            transport = httpx.ASGITransport(app=mw)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await c.get("/v1/models/m", headers=_auth(BOB))

        assert asyncio.run(call()).status_code == 204
    assert seen["key"] == KeyInfo("bob", frozenset({"m"}), 2)
