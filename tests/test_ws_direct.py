"""The streams' direct lane (server/ws_direct.py): audio and results skip the ASGI queues, yet
every message keeps its order, the output stays exact, and lane traffic counts as activity."""

from __future__ import annotations

import asyncio
import json

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
