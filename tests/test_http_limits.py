"""HTTP-layer limits on a real server (header and body read timeouts, connection cap) and the
`s4d serve` flags generated from Settings."""

from __future__ import annotations

import socket
import time

import httpx
import pytest


def _port(srv) -> int:
    return int(srv.base_url.rsplit(":", 1)[1])


def _read_all(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out
            out += chunk
    except (TimeoutError, ConnectionResetError):
        return out


@pytest.fixture(scope="module")
def strict(start_server, checkpoint_dir):
    return start_server(checkpoints=checkpoint_dir, models="tiny", header_timeout_s=0.5,
                        body_timeout_s=0.7, max_connections=8)


def test_half_sent_headers_get_408_and_close(strict):
    socks = []
    t0 = time.monotonic()
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", _port(strict)))
        s.sendall(b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    answers = [_read_all(s, 5) for s in socks]
    elapsed = time.monotonic() - t0
    for s in socks:
        s.close()
    for a in answers:
        assert a.startswith(b"HTTP/1.1 408"), a[:80]
        assert b'"code": "timeout"' in a
    assert elapsed < 3, elapsed
    assert httpx.get(f"{strict.base_url}/healthz").status_code == 200


def test_silent_connection_is_closed(strict):
    s = socket.create_connection(("127.0.0.1", _port(strict)))
    t0 = time.monotonic()
    data = _read_all(s, 5)
    s.close()
    assert data.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 3


def test_half_sent_body_gets_408(strict):
    s = socket.create_connection(("127.0.0.1", _port(strict)))
    s.sendall(b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: text/csv\r\nContent-Length: 100000\r\n\r\n0\n0\n")
    t0 = time.monotonic()
    data = _read_all(s, 5)
    s.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b'"timeout"' in data and time.monotonic() - t0 < 3


def test_keep_alive_request_after_response_still_works(strict):
    with httpx.Client(base_url=strict.base_url) as c:
        for _ in range(3):
            assert c.get("/healthz").status_code == 200
            time.sleep(0.3)  # each new request head gets a fresh deadline


def test_connection_cap(strict):
    socks = [socket.create_connection(("127.0.0.1", _port(strict))) for _ in range(8)]
    try:
        time.sleep(0.1)
        r = httpx.get(f"{strict.base_url}/healthz", timeout=5)
        assert r.status_code == 503
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    assert httpx.get(f"{strict.base_url}/healthz", timeout=5).status_code == 200


def test_connection_cap_answers_in_the_protocols_json(strict):
    """Beyond max_connections uvicorn answered its own text/plain 'Service Unavailable': no
    JSON error body, no Retry-After, no X-Request-ID (every answer carries one)."""
    socks = [socket.create_connection(("127.0.0.1", _port(strict))) for _ in range(8)]
    try:
        time.sleep(0.1)
        v1 = httpx.get(f"{strict.base_url}/v1/models", timeout=5,
                       headers={"X-Request-ID": "cap-1"})
        v2 = httpx.get(f"{strict.base_url}/v2/models/tiny", timeout=5)
    finally:
        for s in socks:
            s.close()
    assert v1.status_code == 503 and v1.headers["content-type"] == "application/json", v1.text
    assert v1.json()["error"]["code"] == "server_busy" and v1.json()["error"]["request_id"] == "cap-1"
    assert v1.headers["x-request-id"] == "cap-1" and v1.headers["retry-after"] == "1"
    assert v2.status_code == 503 and isinstance(v2.json()["error"], str), v2.text
    assert v2.headers["retry-after"] == "1" and v2.headers["x-request-id"]


def test_a_body_larger_than_the_whole_budget_is_admitted_alone(start_server, checkpoint_dir):
    """max_body_bytes_in_flight below max_body_bytes: a body between the two was refused 503
    'try again later' (Retry-After) even with nothing else held, so every retry failed too.
    Alone it is admitted, as a predict larger than max_pending_samples is."""
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", max_body_bytes=150_000,
                       max_body_bytes_in_flight=100_000)
    r = httpx.post(f"{srv.base_url}/v1/models/tiny/predict", content=_npy(120_000),
                   headers={"content-type": "application/x-npy"}, timeout=30)
    assert r.status_code == 200, r.text
    assert _body_bytes(srv) == 0


def test_connection_cap_refuses_websocket_handshakes_too(strict):
    """uvicorn checks limit_concurrency for HTTP requests only: past max_connections every
    WebSocket handshake was still accepted (a flood of idle handshakes held sockets without
    bound), though the cap counts WebSockets."""
    import asyncio

    import websockets
    from websockets.exceptions import InvalidStatus

    async def handshake():
        async with websockets.connect(strict.ws_url("tiny"), open_timeout=5):
            return 101

    socks = [socket.create_connection(("127.0.0.1", _port(strict))) for _ in range(8)]
    try:
        time.sleep(0.1)
        with pytest.raises(InvalidStatus) as exc:
            asyncio.run(handshake())
    finally:
        for s in socks:
            s.close()
    response = exc.value.response
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert b'"server_busy"' in response.body
    time.sleep(0.2)
    assert asyncio.run(handshake()) == 101


def _errors(srv, code: str) -> float:
    for line in httpx.get(f"{srv.base_url}/metrics").text.splitlines():
        if line.startswith(f's4d_errors_total{{code="{code}"}}'):
            return float(line.split()[1])
    return 0.0


def test_client_gone_mid_body_is_not_an_internal_error(strict):
    """A client that closed its connection halfway through a body made starlette raise
    ClientDisconnect out of read_body: a 500 `internal`, logged at ERROR with a traceback, and
    s4d_errors_total{code="internal"} (what alerts watch) grew for every such client."""
    before = _errors(strict, "internal")
    for path in ("/v1/models/tiny/predict", "/v2/models/tiny/infer"):
        s = socket.create_connection(("127.0.0.1", _port(strict)))
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                  "application/json\r\nContent-Length: 100000\r\n\r\n".encode() + b" " * 1000)
        time.sleep(0.1)
        s.close()
    time.sleep(0.3)  # both requests have taken their bodies' bytes; they give them back at the end
    deadline = time.monotonic() + 5
    while _body_bytes(strict) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _errors(strict, "internal") == before


def test_serve_flags_are_generated_from_settings(monkeypatch, tmp_path):
    import s4d_cli
    from server.cli import flag_names, settings_from_args
    from server.settings import Settings

    parser = s4d_cli.build_parser("serve")
    serve = parser._subparsers._group_actions[0].choices["serve"]
    flags = {o for a in serve._actions for o in a.option_strings}
    for field in Settings.model_fields:
        assert set(flag_names(field)) <= flags, field
    for old in ("--idle-ttl", "--graceful-timeout", "--no-warmup", "--compute-threads",
                "--batch-window-ms", "--max-frame-bytes"):
        assert old in flags
    monkeypatch.setenv("S4D_BODY_TIMEOUT_S", "3")
    args = parser.parse_args(["serve", "--checkpoints", str(tmp_path), "--compute-threads", "2",
                              "--graceful-timeout", "4", "--no-warmup", "--allowed-origins",
                              "http://a.example,https://b.example", "--no-public-docs",
                              "--onnx-threads", "3", "--max-connections", "50"])
    s = settings_from_args(args)
    assert (s.compute_threads, s.graceful_timeout_s, s.warmup, s.public_docs) == (2, 4.0, False,
                                                                                  False)
    assert s.allowed_origins == ["http://a.example", "https://b.example"]
    assert (s.body_timeout_s, s.onnx_threads, s.max_connections) == (3.0, 3, 50)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--device", "tpu"])


def test_serve_help_gives_defaults(capsys):
    """`s4d serve --help` gave the defaults of the boolean flags only: --port, --max-sessions
    and the rest said nothing of theirs."""
    import s4d_cli

    with pytest.raises(SystemExit):
        s4d_cli.build_parser("serve").parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for piece in ("TCP port (default 8000)", "bind address (default 127.0.0.1)",
                  "state slots per model (default 256)", "(default fp32)",
                  "leave it off on a CPU"):
        assert piece in text, piece
    assert "PydanticUndefined" not in text and "(default None)" not in text


def test_onnx_settings_read_through_settings(monkeypatch, tmp_path):
    from server.backends.onnx_backend import cache_root

    monkeypatch.setenv("S4D_ONNX_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    from server.cli import export_backend_settings
    from server.settings import Settings

    # recorded by monkeypatch so that the values export_backend_settings writes are undone
    monkeypatch.setenv("S4D_ONNX_THREADS", "1")
    _record_rest_lengths(monkeypatch)
    export_backend_settings(Settings(onnx_threads=5, onnx_cache=tmp_path / "d"))
    assert Settings().onnx_threads == 5 and cache_root() == tmp_path / "d"


def test_fused_core_flag_reaches_the_backends(monkeypatch):
    """`s4d serve --no-fused-core` must reach the torch backends, which read S4D_FUSED_CORE
    through Settings() (also in engine processes, which inherit the environment)."""
    import argparse

    from server.cli import export_backend_settings, register, settings_from_args
    from server.settings import Settings

    monkeypatch.setenv("S4D_FUSED_CORE", "true")  # recorded: undone after the test
    _record_rest_lengths(monkeypatch)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    export_backend_settings(settings_from_args(parser.parse_args(["serve", "--no-fused-core"])))
    assert Settings().fused_core is False


def _record_rest_lengths(monkeypatch) -> None:
    """export_backend_settings writes these too: monkeypatch undoes what it recorded."""
    for name in ("S4D_PREDICT_CHUNK_SAMPLES", "S4D_MAX_SEQUENCE_SAMPLES"):
        monkeypatch.delenv(name, raising=False)


def test_rest_length_flags_reach_the_backends_kept_kernels(monkeypatch):
    """The torch backend sizes its kept batch kernels from Settings() at load (also in engine
    processes): `--predict-chunk-samples` given as a flag must reach it."""
    import argparse

    from server.backends.torch_backend import batch_kernel_steps
    from server.cli import export_backend_settings, register, settings_from_args
    from server.settings import Settings

    _record_rest_lengths(monkeypatch)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    export_backend_settings(settings_from_args(parser.parse_args(
        ["serve", "--predict-chunk-samples", "3200"])))
    assert Settings().predict_chunk_samples == 3200
    assert batch_kernel_steps(Settings(), 160) == 20


@pytest.fixture(scope="module")
def budgeted(start_server, checkpoint_dir):
    """Bodies up to 150 kB each, 200 kB held at once; slow bodies may take 20 s."""
    return start_server(checkpoints=checkpoint_dir, models="tiny", max_body_bytes=150_000,
                        max_body_bytes_in_flight=200_000, body_timeout_s=20.0)


def _npy(n_bytes: int) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.zeros((n_bytes - 128) // 4, np.float32))
    return buf.getvalue()


def _body_bytes(srv) -> float:
    for line in httpx.get(f"{srv.base_url}/metrics").text.splitlines():
        if line.startswith("s4d_request_body_bytes "):
            return float(line.split()[1])
    raise AssertionError("s4d_request_body_bytes is not on /metrics")


def test_bodies_in_memory_are_budgeted(budgeted):
    """A request whose body would take the bodies held at once beyond
    max_body_bytes_in_flight is refused 503 server_busy (Retry-After) before its body is read,
    in each API's error format; a body without Content-Length counts as it arrives; the bytes
    come back when the request holding them ends."""
    url = budgeted.base_url
    held = socket.create_connection(("127.0.0.1", _port(budgeted)))  # 150 kB declared, 10 sent
    held.sendall(b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/x-npy\r\nContent-Length: 150000\r\n\r\n" + b"\0" * 10)
    chunked = None
    try:
        deadline = time.monotonic() + 10
        while _body_bytes(budgeted) < 150_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _body_bytes(budgeted) == 150_000
        body = _npy(100_000)
        r = httpx.post(f"{url}/v1/models/tiny/predict", content=body,
                       headers={"content-type": "application/x-npy"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy", r.text
        assert r.headers["retry-after"] == "1"
        r = httpx.post(f"{url}/v2/models/tiny/infer", content=b"{" + b" " * 99_000 + b"}",
                       headers={"content-type": "application/json"})
        assert r.status_code == 503 and "150000 bytes are being processed" in r.json()["error"]
        small = httpx.post(f"{url}/v1/models/tiny/predict", content=_npy(20_000),
                           headers={"content-type": "application/x-npy"})
        assert small.status_code == 200, small.text  # 150 + 20 kB fit
        held.close()  # the held request ends: its bytes come back
        deadline = time.monotonic() + 10
        while _body_bytes(budgeted) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _body_bytes(budgeted) == 0
        chunked = socket.create_connection(("127.0.0.1", _port(budgeted)))
        chunked.sendall(b"POST /v1/models/tiny/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/x-npy\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + b"%x\r\n" % 120_000 + b"\0" * 120_000 + b"\r\n")
        deadline = time.monotonic() + 10
        while _body_bytes(budgeted) < 120_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _body_bytes(budgeted) == 120_000
        r = httpx.post(f"{url}/v1/models/tiny/predict", content=body,
                       headers={"content-type": "application/x-npy"})
        assert r.status_code == 503, r.text
    finally:
        held.close()
        if chunked is not None:
            chunked.close()
    deadline = time.monotonic() + 10
    while _body_bytes(budgeted) and time.monotonic() < deadline:
        time.sleep(0.05)
    r = httpx.post(f"{url}/v1/models/tiny/predict", content=body,
                   headers={"content-type": "application/x-npy"})
    assert r.status_code == 200, r.text
