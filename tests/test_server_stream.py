"""Streaming over the WebSocket equals the REST batch prediction (real server, real client)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def rand_signal(rng, n, c=1, scale=0.3):
    return (rng.standard_normal((n, c)) * scale).clip(-0.99, 0.99).astype(np.float32)


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=4),
    n=st.integers(1, 700),
    encoding=st.sampled_from(["f32le", "pcm_s16le"]),
    seed=st.integers(0, 2**16),
)
def test_stream_equals_batch(live_server, ws_client, batch_predict, probs_close,
                             sizes, n, encoding, seed):
    x = rand_signal(np.random.default_rng(seed), n)
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url("tiny"), x, encoding=encoding, sizes=sizes,
        start={"sample_rate": 16000}))
    assert res.close_code == 1000, res.messages
    assert res.final is not None and res.final["offset"] == n
    ref = batch_predict(live_server, "tiny", [ws_client.decoded(x, encoding)])[0]
    probs_close(res.final["probabilities"], ref)
    # results come at every crossing of emit_every (= frame_size 64), in order
    offsets = [r["offset"] for r in res.results]
    assert offsets == sorted(offsets) and len(offsets) == n // 64
    assert all(r["latency_ms"] >= 0 for r in res.results)


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=3),
    n=st.integers(2, 200),
    encoding=st.sampled_from(["f32le", "pcm_s16le"]),
    seed=st.integers(0, 2**16),
)
def test_stream_multichannel_patches(live_server, ws_client, batch_predict, probs_close,
                                     sizes, n, encoding, seed):
    """2 interleaved channels, patch_size 2 (odd tails are ignored like the batch path)."""
    x = rand_signal(np.random.default_rng(seed), n, c=2)
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url("tiny2"), x, encoding=encoding, sizes=sizes,
        start={"sample_rate": 100, "emit_every": 10}))
    assert res.close_code == 1000, res.messages
    ref = batch_predict(live_server, "tiny2", [ws_client.decoded(x, encoding)])[0]
    probs_close(res.final["probabilities"], ref)
    assert res.final["offset"] == n


@SETTINGS
@given(
    n1=st.integers(1, 300), n2=st.integers(1, 300),
    sizes=st.lists(st.integers(1, 500), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_reset_starts_a_new_segment(live_server, ws_client, batch_predict, probs_close,
                                    n1, n2, sizes, seed):
    rng = np.random.default_rng(seed)
    a, b = rand_signal(rng, n1), rand_signal(rng, n2)
    x = np.concatenate([a, b])
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url("tiny"), x, sizes=sizes, reset_after=n1,
        start={"sample_rate": 16000, "emit_every": 0}))
    assert res.close_code == 1000, res.messages
    seg = [m for m in res.messages if m.get("segment_end")]
    acks = [m for m in res.messages if m["type"] == "reset"]
    assert len(seg) == 1 and len(acks) == 1 and acks[0]["offset"] == n1
    ref_a, ref_b = batch_predict(live_server, "tiny", [a, b])
    probs_close(seg[0]["probabilities"], ref_a)
    probs_close(res.final["probabilities"], ref_b)
    assert not res.results[:-1] if res.results else True  # emit_every 0: only segment_end
    types = [m["type"] for m in res.messages]
    assert types.index("reset") > types.index("result") and types[-1] == "final"


def test_pooling_none_stream_and_per_step(live_server, ws_client, probs_close):
    import httpx

    x = rand_signal(np.random.default_rng(3), 57)
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url("tinynone"), x, sizes=[13], start={"sample_rate": 250}))
    r = httpx.post(f"{live_server.base_url}/v1/models/tinynone/predict",
                   json={"inputs": [x[:, 0].tolist()], "per_step": True}).json()
    pred = r["predictions"][0]
    assert len(pred["per_step"]) == 57
    probs_close(res.final["probabilities"], pred["probabilities"])
    last = dict(zip(["p", "q"], pred["per_step"][-1], strict=True))
    probs_close(res.final["probabilities"], last)


@SETTINGS
@given(
    sizes=st.lists(st.integers(1, 900), min_size=1, max_size=3),
    n=st.integers(1, 1500),
    seed=st.integers(0, 2**16),
)
def test_ema_pooling_stream_equals_batch(live_server, ws_client, batch_predict, probs_close,
                                         sizes, n, seed):
    """Pooling that forgets streams exactly too: the final and every result equal the batch
    prediction of the prefix (several time constants long)."""
    x = rand_signal(np.random.default_rng(seed), n)
    res = asyncio.run(ws_client.stream_signal(
        live_server.ws_url("tinyema"), x, sizes=sizes, start={"sample_rate": 2000}))
    assert res.close_code == 1000, res.messages
    assert res.final is not None and res.final["offset"] == n
    probs_close(res.final["probabilities"], batch_predict(live_server, "tinyema", [x])[0])
    some = res.results[:: max(1, len(res.results) // 3)]
    assert len(res.results) == n // 32  # one per frame (emit_every defaults to frame_size)
    refs = batch_predict(live_server, "tinyema", [x[: r["offset"]] for r in some]) if some else []
    for r, ref in zip(some, refs, strict=True):
        probs_close(r["probabilities"], ref)


async def _resume(h, url, x, cut, back, sizes):
    """Send x[:cut], drop the connection, resume at offset cut-back (duplicates), finish."""
    start = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1,
             "emit_every": 0}
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps(start))
        sid = json.loads(await ws.recv())["session_id"]
        for piece in h.split(h.encode(x[:cut], "f32le"), sizes):
            await ws.send(piece)
        await ws.send(b"\x00\x00")  # half a sample in flight when the connection drops
    for _ in range(200):  # until the server has seen the disconnect
        ws = await websockets.connect(url)
        await ws.send(json.dumps({**start, "session_id": sid, "offset": cut - back}))
        msg = json.loads(await ws.recv())
        if msg["type"] == "error" and msg["code"] == "session_busy":
            await ws.close()
            await asyncio.sleep(0.02)
            continue
        break
    assert msg["type"] == "started" and msg["session_id"] == sid, msg
    assert msg["offset"] == cut
    res = h.StreamResult(started=msg)
    async with ws:
        reader = asyncio.ensure_future(h.recv_all(ws, res))
        for piece in h.split(h.encode(x[cut - back :], "f32le"), sizes):
            await ws.send(piece)
        await ws.send(json.dumps({"type": "end"}))
        await reader
    return res


@pytest.mark.parametrize("cut,back", [(300, 0), (300, 120), (64, 64)])
def test_resume_skips_duplicates(start_server, checkpoint_dir, ws_client, batch_predict,
                                 probs_close, cut, back):
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", idle_ttl_s=10)
    x = rand_signal(np.random.default_rng(cut + back), 500)
    res = asyncio.run(_resume(ws_client, srv.ws_url("tiny"), x, cut, back, [37, 100]))
    assert res.close_code == 1000, res.messages
    assert res.final["offset"] == 500
    probs_close(res.final["probabilities"], batch_predict(srv, "tiny", [x])[0])


def test_64_concurrent_sessions(live_server, ws_client, batch_predict, probs_close):
    rng = np.random.default_rng(64)
    signals = [rand_signal(rng, int(rng.integers(50, 400))) for _ in range(64)]

    async def main():
        return await asyncio.gather(*(
            ws_client.stream_signal(live_server.ws_url("tiny"), s, sizes=[int(17 + 5 * i)],
                                    start={"sample_rate": 16000})
            for i, s in enumerate(signals)))

    results = asyncio.run(main())
    refs = batch_predict(live_server, "tiny", signals)
    ids = {r.started["session_id"] for r in results}
    assert len(ids) == 64
    for res, ref, s in zip(results, refs, signals, strict=True):
        assert res.close_code == 1000
        assert res.final["offset"] == len(s)
        probs_close(res.final["probabilities"], ref)
    text = live_server.metrics_text()
    # several sessions were stepped together at least once
    hist = [ln for ln in text.splitlines()
            if ln.startswith('s4d_scheduler_batch_size_bucket{le="1.0",model="tiny"}')]
    count = [ln for ln in text.splitlines()
             if ln.startswith('s4d_scheduler_batch_size_count{model="tiny"}')]
    assert hist and count and float(hist[0].split()[-1]) < float(count[0].split()[-1])


def test_idle_sweeps_pass_over_batch_only_models(start_server, checkpoint_dir, caplog):
    """The idle-TTL reaper visits every model, the batch-only `tinybi` (no sessions, no sample
    buffers) included, without an error; a stream left behind is still evicted after the TTL."""
    import logging
    import time

    import httpx

    with caplog.at_level(logging.ERROR, logger="s4d.engine"):
        s = start_server(checkpoints=checkpoint_dir, idle_ttl_s=0.4)

        async def leave_one() -> str:
            async with websockets.connect(f"{s.ws_base}/v1/models/tiny/stream") as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000,
                                          "encoding": "f32le", "channels": 1}))
                started = json.loads(await ws.recv())
                assert started["type"] == "started", started
                return started["session_id"]

        sid = asyncio.run(leave_one())  # closed without `end`: detached, resumable for the TTL
        url = f"{s.base_url}/v1/sessions/{sid}/snapshot"
        before = httpx.get(url, timeout=5).status_code
        time.sleep(1.2)  # the TTL and several sweeps (every TTL / 4)
        after = httpx.get(url, timeout=5)
    assert "idle-TTL sweep" not in caplog.text
    assert before == 200 and after.status_code == 404, after.text
