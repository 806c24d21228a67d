"""`--workers 2` when a process stalls (SIGSTOP / SIGCONT: a process that stops running for a
while, as a CPU-starved, throttled or paused one does, without dying).

The engine and the front-ends each declare the other lost after `frontend_timeout_s` of
silence. A stalled process has not read what the others sent meanwhile: its own stall is not
their silence. Whatever the timing, a stream either goes on (every sample answered, `final`
equal to the batch path) or gets an `error` and a close, and its session stays resumable; no
session is left attached to a front-end that no longer serves it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import numpy as np
import websockets

from tests.conftest import assert_probs_close, encode
from tests.test_workers import START, Workers, batch

EMIT = {**START, "emit_every": 64}


def _active(w: Workers) -> float:
    text = httpx.get(f"{w.base}/metrics", timeout=10).text
    return sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith("s4d_sessions_active{"))


async def _results_until(ws, offset: int, timeout: float = 10.0) -> list[dict]:
    """Messages until a result at `offset` (or an error / close): never waits forever."""
    msgs = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no result at {offset} within {timeout}s (a hang): {msgs[-3:]}"
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        except websockets.ConnectionClosed:
            return msgs
        except asyncio.TimeoutError:
            raise AssertionError(f"no result at {offset} within {timeout}s (a hang): "
                                 f"{msgs[-3:]}") from None
        msgs.append(msg)
        if msg["type"] == "error" or (msg["type"] == "result" and msg["offset"] >= offset):
            return msgs


async def _stream_to(w: Workers, samples: np.ndarray, start: dict = EMIT, model: str = "tiny"):
    """A stream that sent `samples` and got its result at their end: (socket, session id)."""
    ws = await websockets.connect(w.url(model))
    await ws.send(json.dumps(start))
    started = json.loads(await ws.recv())
    assert started["type"] == "started", started
    await ws.send(encode(samples[:, None], "f32le"))
    msgs = await _results_until(ws, len(samples))
    assert msgs[-1]["type"] == "result", msgs[-1]
    return ws, started["session_id"]


async def _end(ws) -> dict:
    """`end`, then the stream's `final` (the results before it passed over)."""
    await ws.send(json.dumps({"type": "end"}))
    while (msg := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "final":
        assert msg["type"] == "result", msg
    return msg


def test_engine_stall_does_not_count_as_frontend_silence(checkpoint_dir):
    """The engine stops for 1.6 s while the front-end holding a stream had itself been quiet
    for 0.6 s just before: 2.2 s of wall time without a message from it, but only 0.6 s of
    the engine's running time, and the front-end's pings wait in the engine's socket. The
    engine used to count its own stall, detach every session of that front-end and send their
    results nowhere: the stream got no more results and hung (then expired with the idle TTL
    while its client was still connected)."""
    w = Workers(checkpoint_dir, S4D_FRONTEND_TIMEOUT_S=2, S4D_IDLE_TTL_S=5)
    x = (np.random.default_rng(5).standard_normal(1280) * 0.3).astype(np.float32)
    try:
        async def main():
            ws, _ = await _stream_to(w, x[:640])
            front = w.frontend_of(ws)
            (engine,) = w.children("s4d-engine")
            front.send_signal(signal.SIGSTOP)  # quiet: no pings from it
            await asyncio.sleep(0.55)
            engine.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.05)
            front.send_signal(signal.SIGCONT)  # its pings now wait for the engine
            await asyncio.sleep(1.6)
            engine.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.5)
            await ws.send(encode(x[640:, None], "f32le"))
            msgs = await _results_until(ws, 1280)
            assert msgs[-1]["type"] == "result", msgs[-1]  # nobody was silent: no error
            final = await _end(ws)
            await asyncio.wait_for(ws.wait_closed(), 10)
            return final, ws.close_code

        final, code = asyncio.run(main())
        assert final["type"] == "final" and final["offset"] == len(x) and code == 1000
        assert_probs_close(final["probabilities"], batch(w, x), 1e-5)
    finally:
        w.stop()


def test_engine_lost_and_back_leaves_no_session_attached(checkpoint_dir):
    """The engine stops for 4 s: the front-ends declare it lost and fail their streams
    (`internal`, 1011), but the engine comes back with the same epoch, its sessions intact.
    They must not stay attached to front-ends that dropped them (resume answered
    `session_busy` for ever, the slot never freed): they are resumable for the idle TTL, then
    expire, and `s4d_sessions_active` returns to 0."""
    w = Workers(checkpoint_dir, S4D_FRONTEND_TIMEOUT_S=1, S4D_IDLE_TTL_S=4)
    x = (np.random.default_rng(6).standard_normal(640) * 0.3).astype(np.float32)
    try:
        async def main():
            ws, sid = await _stream_to(w, x[:320])
            idle = await websockets.connect(w.url())  # one to leave alone: it must expire
            await idle.send(json.dumps(EMIT))
            assert json.loads(await idle.recv())["type"] == "started"
            (engine,) = w.children("s4d-engine")
            engine.send_signal(signal.SIGSTOP)
            await asyncio.sleep(4)
            engine.send_signal(signal.SIGCONT)
            for sock in (ws, idle):
                msg = json.loads(await asyncio.wait_for(sock.recv(), 10))
                assert msg["type"] == "error" and msg["code"] == "internal", msg
                await asyncio.wait_for(sock.wait_closed(), 10)
                assert sock.close_code == 1011
            deadline = time.monotonic() + 10
            while True:  # the front-ends reconnect to the engine; then the session resumes
                async with websockets.connect(w.url()) as ws2:
                    try:  # a front-end still reconnecting refuses at once (server_busy, 1013)
                        await ws2.send(json.dumps({**EMIT, "session_id": sid, "offset": 320}))
                        msg = json.loads(await asyncio.wait_for(ws2.recv(), 10))
                    except websockets.ConnectionClosed:
                        assert ws2.close_code == 1013, ws2.close_code
                        msg = {"type": "error", "code": "server_busy"}
                    if msg["type"] == "error":
                        assert msg["code"] in ("session_busy", "server_busy"), msg
                        assert time.monotonic() < deadline, f"never resumable: {msg}"
                        await asyncio.sleep(0.2)
                        continue
                    assert msg["offset"] == 320
                    await ws2.send(encode(x[320:, None], "f32le"))
                    return await _end(ws2)

        final = asyncio.run(main())
        assert final["offset"] == len(x)
        assert_probs_close(final["probabilities"], batch(w, x), 1e-5)
        deadline = time.monotonic() + 15  # the idle one expires with the TTL
        while _active(w) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _active(w) == 0
    finally:
        w.stop()


def test_frontend_silent_but_alive_hears_its_sessions_were_detached(checkpoint_dir):
    """A front-end stops for 3 s (the engine, running, detaches its sessions: silence past
    frontend_timeout_s) and comes back with an answer from the engine waiting in its socket,
    so it does not take the engine for lost. It used to go on streaming into sessions the
    engine had detached: results went nowhere and the stream hung. The engine now tells it,
    and the stream gets an error and a close; its session resumes with every sample."""
    w = Workers(checkpoint_dir, S4D_FRONTEND_TIMEOUT_S=1, S4D_IDLE_TTL_S=30)
    x = (np.random.default_rng(8).standard_normal(1280) * 0.3).astype(np.float32)
    try:
        async def main():
            ws, sid = await _stream_to(w, x[:640])
            front = w.frontend_of(ws)
            (engine,) = w.children("s4d-engine")
            engine.send_signal(signal.SIGSTOP)  # the front-end's next ping waits unanswered
            await asyncio.sleep(0.7)
            front.send_signal(signal.SIGSTOP)  # ... while it stops
            await asyncio.sleep(0.1)
            engine.send_signal(signal.SIGCONT)  # answers the ping into the stopped front-end
            await asyncio.sleep(3)  # and detaches its sessions after 1 s of silence
            front.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.5)
            msgs = []
            try:
                await ws.send(encode(x[640:, None], "f32le"))
                msgs = await _results_until(ws, 1280)
            except websockets.ConnectionClosed:
                pass
            if not msgs or msgs[-1]["type"] == "error":  # told: resume, resend what is missing
                for _ in range(50):
                    async with websockets.connect(w.url()) as ws2:
                        await ws2.send(json.dumps({**EMIT, "session_id": sid, "offset": 640}))
                        msg = json.loads(await asyncio.wait_for(ws2.recv(), 10))
                        if msg["type"] == "error":
                            assert msg["code"] == "session_busy", msg
                            await asyncio.sleep(0.2)
                            continue
                        assert msg["offset"] >= 640
                        await ws2.send(encode(x[msg["offset"]:, None], "f32le"))
                        return await _end(ws2)
                raise AssertionError("the session never became resumable")
            return await _end(ws)

        final = asyncio.run(main())
        assert final["type"] == "final" and final["offset"] == len(x)
        assert_probs_close(final["probabilities"], batch(w, x), 1e-5)
    finally:
        w.stop()


async def _connect_not_to(w: Workers, stale, model: str, timeout: float = 20.0):
    """A connection to another front-end than `stale` (stopped: one that lands on its socket
    never completes the handshake)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ws = await websockets.connect(w.url(model), open_timeout=1)
        except (asyncio.TimeoutError, OSError, websockets.InvalidHandshake):
            await asyncio.sleep(0.05)
            continue
        if w.frontend_of(ws).pid != stale.pid:
            return ws
        await ws.close()
    raise AssertionError("no connection reached another front-end")


def test_stale_frontend_waking_with_queued_samples_does_not_corrupt_resumed_session(
        checkpoint_dir):
    """A front-end stops (SIGSTOP) with samples of its client queued for its next tick (100 ms
    apart here); the engine detaches its session after frontend_timeout_s of silence, and the
    client resumes it through the other front-end and streams on (its last partial frame
    buffered, not yet stepped). The stopped front-end then wakes (SIGCONT): its overdue tick
    runs before it reads that the session was detached, and sends the samples it holds. The
    owner check refused their commit, but they used to be written into the engine's shared
    sample ring, in the session's slot, over the resumed stream's samples that the engine had
    not read yet: `final` differed from the batch path. Samples now reach a session only from
    the front-end it is attached to."""
    w = Workers(checkpoint_dir, S4D_FRONTEND_TIMEOUT_S=1, S4D_IDLE_TTL_S=30,
                S4D_TICK_INTERVAL_MS=100)
    model, ring = "tinynone", 128  # its per-session sample ring: max(8 frames, rate / 2)
    # (pooling none: `final` is the prediction after the last sample, so it shows any change)
    n0, total = 64, 64 + 2 * ring + 9  # the resumed stream ends in a partial frame of 9
    x = (np.random.default_rng(9).standard_normal(total) * 0.5).astype(np.float32)
    start = {**EMIT, "sample_rate": 250}
    try:
        async def main():
            ws_a, sid = await _stream_to(w, x[:n0], start, model)
            front = w.frontend_of(ws_a)  # it has heard every sample is consumed: full credit
            # a tick went out just now: these wait for the next one, up to 100 ms later
            await ws_a.send(encode(x[n0:n0 + ring, None], "f32le"))
            await asyncio.sleep(0.03)
            front.send_signal(signal.SIGSTOP)
            try:
                ws_b = await _connect_not_to(w, front, model)
                deadline = time.monotonic() + 10
                while True:  # session_busy until the engine detaches it (1 s of silence)
                    await ws_b.send(json.dumps({**start, "session_id": sid}))
                    msg = json.loads(await asyncio.wait_for(ws_b.recv(), 10))
                    if msg["type"] == "started":
                        break
                    assert msg["code"] == "session_busy", msg
                    assert time.monotonic() < deadline, "the session was never detached"
                    await asyncio.wait_for(ws_b.wait_closed(), 10)
                    await asyncio.sleep(0.2)
                    ws_b = await _connect_not_to(w, front, model)
                # n0; n0 + ring only if its tick went out before it stopped (a host too slow
                # for the 30 ms above: then it holds nothing, and nothing is tested)
                held = msg["offset"]
                assert held in (n0, n0 + ring), msg
                await ws_b.send(encode(x[held:, None], "f32le"))
                # every full frame stepped; the last 9 samples go out with the next tick and
                # wait in the slot's ring, where the stale front-end's samples n0 .. n0 + 8 go
                assert (await _results_until(ws_b, total - 9))[-1]["type"] == "result"
                await asyncio.sleep(0.5)
            finally:
                front.send_signal(signal.SIGCONT)
            await asyncio.sleep(1.0)  # it wakes, ticks, then reads the detach
            final = await _end(ws_b)
            await ws_a.close()
            return final

        final = asyncio.run(main())
        assert final["offset"] == total
        assert_probs_close(final["probabilities"], batch(w, x, model), 1e-5)
    finally:
        w.stop()
