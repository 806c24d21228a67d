"""Limits that keep one client from locking others out: start and idle timeouts, per-key session
quota, and sessions that belong to the key that opened them."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

START = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1,
         "emit_every": 0}


async def _recv_until_close(ws) -> tuple[list, int | None]:
    msgs = []
    try:
        while True:
            msgs.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    except websockets.ConnectionClosed:
        pass
    return msgs, ws.close_code


def test_start_and_idle_timeouts(start_server, checkpoint_dir, probs_close, batch_predict):
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", start_timeout_s=0.5,
                       stream_idle_timeout_s=0.8)
    x = np.linspace(-1, 1, 300, dtype=np.float32)

    async def main():
        async with websockets.connect(srv.ws_url("tiny")) as ws:  # never sends start
            no_start = await _recv_until_close(ws)
        ws = await websockets.connect(srv.ws_url("tiny"))
        await ws.send(json.dumps(START))
        sid = json.loads(await ws.recv())["session_id"]
        await ws.send(x[:100].astype("<f4").tobytes())
        idle = await _recv_until_close(ws)  # then silence: timed out, session kept
        async with websockets.connect(srv.ws_url("tiny")) as ws:
            await ws.send(json.dumps({**START, "session_id": sid, "offset": 100}))
            started = json.loads(await ws.recv())
            await ws.send(x[100:].astype("<f4").tobytes())
            await ws.send(json.dumps({"type": "end"}))
            final = json.loads(await ws.recv())
        return no_start, idle, started, final

    no_start, idle, started, final = asyncio.run(main())
    assert no_start[0][0]["code"] == "timeout" and no_start[1] == 1008
    assert idle[0][-1]["code"] == "timeout" and idle[1] == 1008
    assert started["offset"] == 100  # resumable after the idle timeout
    probs_close(final["probabilities"], batch_predict(srv, "tiny", [x[:, None]])[0], 1e-5)


def test_key_quota_and_ownership(start_server, checkpoint_dir, tmp_path):
    from server.auth import key_line, new_key

    alice, bob = new_key(), new_key()
    alice_line = key_line("alice", alice, None, 2)
    bob_line = key_line("bob", bob)
    keys = tmp_path / "keys"
    keys.write_text(alice_line + "\n" + bob_line + "\n")
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", api_keys_file=keys)

    def hdr(key):
        return {"additional_headers": {"Authorization": f"Bearer {key}"}}

    async def main():
        held = []
        for _ in range(2):
            ws = await websockets.connect(srv.ws_url("tiny"), **hdr(alice))
            await ws.send(json.dumps(START))
            held.append((ws, json.loads(await ws.recv())["session_id"]))
        async with websockets.connect(srv.ws_url("tiny"), **hdr(alice)) as ws:
            await ws.send(json.dumps(START))
            over = await _recv_until_close(ws)
        async with websockets.connect(srv.ws_url("tiny"), **hdr(bob)) as ws:
            await ws.send(json.dumps(START))  # another key has its own quota
            bob_ok = json.loads(await ws.recv())
        ws, sid = held[0]
        await ws.close()
        await asyncio.sleep(0.3)
        async with websockets.connect(srv.ws_url("tiny"), **hdr(bob)) as ws:
            await ws.send(json.dumps({**START, "session_id": sid, "offset": 0}))
            stolen = await _recv_until_close(ws)
        async with websockets.connect(srv.ws_url("tiny"), **hdr(alice)) as ws:
            await ws.send(json.dumps({**START, "session_id": sid, "offset": 0}))
            mine = json.loads(await ws.recv())
        await held[1][0].close()
        return over, bob_ok, stolen, mine

    over, bob_ok, stolen, mine = asyncio.run(main())
    assert over[0][0]["code"] == "quota_exceeded" and over[1] == 1013
    assert bob_ok["type"] == "started"
    assert stolen[0][0]["code"] == "session_forbidden" and stolen[1] == 1008
    assert mine["type"] == "started"


@pytest.mark.parametrize("field", ["start_timeout_s", "stream_idle_timeout_s"])
def test_timeouts_are_settings(field):
    from server.settings import Settings

    assert Settings.model_fields[field].default > 0
