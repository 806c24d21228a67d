"""The streams' direct lane (server/ws_direct.py): audio and results skip the ASGI queues, yet
every message keeps its order, the output stays exact, and lane traffic counts as activity."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import websockets

from server import ws as ws_module
from server.ws_direct import DirectWebSocketProtocol


def rand_signal(rng, n: int) -> np.ndarray:
    return (0.3 * rng.standard_normal((n, 1))).astype(np.float32)


START = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1}


def _count_calls(monkeypatch, owner, name: str) -> list:
    calls: list = []
    real = getattr(owner, name)

    def counted(self, *args):
        out = real(self, *args)
        calls.append(out)
        return out

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_lane_carries_audio_and_results_in_order(live_server, ws_client, batch_predict,
                                                  probs_close, monkeypatch):
    """Small pieces with a reset between two segments, sent without waiting: most audio and
    most results take the lane, and both segments still equal the batch path."""
    taken = _count_calls(monkeypatch, ws_module.StreamConnection, "_take_bytes")
    written = _count_calls(monkeypatch, DirectWebSocketProtocol, "send_text_now")
    rng = np.random.default_rng(11)
    a, b = rand_signal(rng, 900), rand_signal(rng, 700)
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url("tiny"), np.concatenate([a, b]), sizes=[36, 4, 402, 6],
        reset_after=len(a), start={"sample_rate": 16000, "emit_every": 50}))
    assert res.close_code == 1000, res.messages
    ref_a, ref_b = batch_predict(live_server, "tiny", [a, b])
    seg = [m for m in res.messages if m.get("segment_end")]
    probs_close(seg[0]["probabilities"], ref_a)
    probs_close(res.final["probabilities"], ref_b)
    offsets = [m["offset"] for m in res.messages if m["type"] in ("result", "reset", "final")]
    assert offsets == sorted(offsets) and offsets[-1] == len(a) + len(b)
    assert seg[0]["offset"] == len(a)
    assert sum(taken) > 0, "no binary message took the direct lane"
    assert sum(written) > 0, "no result was written on the direct lane"


def test_streaming_past_the_idle_timeout_is_not_idle(start_server, checkpoint_dir,
                                                      batch_predict, probs_close):
    """Audio that arrives only through the lane keeps a stream alive past
    stream_idle_timeout_s; silence after it still times out."""
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", stream_idle_timeout_s=0.5)
    x = np.linspace(-1, 1, 1600, dtype=np.float32)

    async def main():
        async with websockets.connect(srv.ws_url("tiny")) as ws:
            await ws.send(json.dumps({**START, "emit_every": 0}))
            sid = json.loads(await ws.recv())["session_id"]
            for piece in np.split(x, 32):  # 32 x 50 ms = 1.6 s, three idle timeouts
                await ws.send(piece.astype("<f4").tobytes())
                await asyncio.sleep(0.05)
            await ws.send(json.dumps({"type": "end"}))
            final = json.loads(await ws.recv())
        async with websockets.connect(srv.ws_url("tiny")) as ws:
            await ws.send(json.dumps({**START, "emit_every": 0}))
            json.loads(await ws.recv())
            await ws.send(x[:100].astype("<f4").tobytes())
            silent = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return sid, final, silent

    sid, final, silent = asyncio.run(main())
    assert final["type"] == "final" and final["session_id"] == sid, final
    assert final["offset"] == len(x)
    probs_close(final["probabilities"], batch_predict(srv, "tiny", [x[:, None]])[0], 1e-5)
    assert silent["type"] == "error" and silent["code"] == "timeout"


def _slow_consumers(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("s4d_errors_total{") and 'code="slow_consumer"' in line)


def test_a_client_that_does_not_read_gets_slow_consumer(start_server, checkpoint_dir,
                                                        ws_client):
    """Results the client leaves unread pile up on the server only up to max_unsent_bytes:
    then `slow_consumer`, close 1008 (written even while the socket is not writable and the
    client stays away for longer than the server waits), and the session resumes from where
    it was."""
    import socket

    srv = start_server(checkpoints=checkpoint_dir, models="tiny", max_unsent_bytes=4096)
    x = (np.random.default_rng(5).standard_normal(400_000) * 0.3).astype("<f4")

    async def main():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads slowly
        sock.connect(("127.0.0.1", srv.settings.port))
        ws = await websockets.connect(srv.ws_url("tiny"), sock=sock, max_queue=1)
        await ws.send(json.dumps({**START, "emit_every": 64}))
        sid = json.loads(await ws.recv())["session_id"]
        for conn in list(srv.server.server_state.connections):  # a slow link: small kernel
            s = conn.transport.get_extra_info("socket")  # buffers on the server's side too
            if s is not None and s.getpeername()[1] == sock.getsockname()[1]:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                # as its transport does once unsent bytes pass the high-water mark (seen under
                # load): the close must not wait for the socket to become writable again
                conn.loop.call_soon_threadsafe(conn.pause_writing)
        for piece in np.array_split(x, 100):  # a result per 64 samples, none read meanwhile
            await ws.send(piece.tobytes())
        # read nothing until the server has given up on us: on a loaded machine the sends
        # finish into kernel buffers long before the results exist, and a client that started
        # reading then would be a fast one (seen: the results never piled up, no close came)
        deadline = time.monotonic() + 90
        while _slow_consumers(await asyncio.to_thread(srv.metrics_text)) < 1:
            assert time.monotonic() < deadline, "no slow_consumer within 90 s"
            await asyncio.sleep(0.2)
        # and stay away longer than the server waits for its sender (5 s): the close must be
        # written anyway (it used to wait for the socket to drain, was cancelled, never sent)
        await asyncio.sleep(6)
        res = await ws_client.recv_all(ws, ws_client.StreamResult(), timeout=10)
        msgs, closed = res.messages, res.close_code
        # the old connection detaches once every sample it sent has reached the engine
        # (nothing accepted is dropped); until then a resume is `session_busy`
        while True:
            async with websockets.connect(srv.ws_url("tiny")) as again:
                await again.send(json.dumps({**START, "session_id": sid, "emit_every": 0}))
                resumed = json.loads(await again.recv())
            if resumed.get("code") != "session_busy" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        return msgs, closed, resumed, sid

    msgs, closed, resumed, sid = asyncio.run(main())
    assert msgs[-1]["type"] == "error" and msgs[-1]["code"] == "slow_consumer", msgs[-3:]
    assert closed == 1008
    assert resumed["type"] == "started" and resumed["session_id"] == sid, resumed
    assert 0 < resumed["offset"] <= len(x)  # every sample taken before the close is held
