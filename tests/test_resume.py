"""Sessions that survive their replica (issue 11): snapshots in a real Redis, resume on another
server (another process), the operator routes, drain with a store, fencing, Redis down/up.

Servers: `start_server` (in this process, its own engine) and `python -m server` subprocesses,
all on loopback, sharing Debian's redis-server (tests/redis_server.py; skipped without it).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets
from conftest import (
    ROOT,
    assert_probs_close,
    child_pythonpath,
    encode,
    free_port,
    stop_process_group,
)
from redis_server import RedisServer

START = {"type": "start", "sample_rate": 16000, "encoding": "f32le", "channels": 1,
         "emit_every": 0}


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    r = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield r
    r.stop()


def _store_settings(redis, **kw) -> dict:
    return dict(session_store=redis.url, snapshot_interval_s=0.2, lease_wait_s=0.3,
                idle_ttl_s=30.0, **kw)


class SubServer:
    """`python -m server` in its own process (its own engine)."""

    def __init__(self, checkpoints, redis_url: str, *extra: str, **env):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="s4d-sub-", suffix=".log")[1])
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(self.port), "--checkpoints",
             str(checkpoints), "--models", "tiny", "--session-store", redis_url,
             "--snapshot-interval", "0.2", "--lease-wait", "0.3", "--log-level", "warning",
             *extra],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": child_pythonpath(), "S4D_COMPUTE_THREADS": "1",
                           **env},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("subprocess server did not become ready")

    def ws(self, model: str = "tiny") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/models/{model}/stream"

    def stop(self) -> None:
        stop_process_group(self.proc)


@pytest.fixture(scope="module")
def other(checkpoint_dir, redis):
    s = SubServer(checkpoint_dir, redis.url)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def here(start_server, checkpoint_dir, redis):
    return start_server(checkpoints=checkpoint_dir, models="tiny", **_store_settings(redis))


def batch(base: str, x: np.ndarray) -> dict:
    r = httpx.post(f"{base}/v1/models/tiny/predict", json={"inputs": [x.tolist()]}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["probabilities"]


def metric(base: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.split()[-1])
    return total


async def _recv_until(ws, types: set[str], timeout: float = 20) -> list[dict]:
    out = []
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        out.append(msg)
        if msg["type"] in types:
            return out


async def _finish(url: str, sid: str, offset: int, rest: np.ndarray) -> tuple[dict, dict]:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({**START, "session_id": sid, "offset": offset}))
        started = json.loads(await ws.recv())
        if started["type"] != "started":
            return started, {}
        await ws.send(encode(rest[:, None], "f32le"))
        await ws.send(json.dumps({"type": "end"}))
        msgs = await _recv_until(ws, {"final", "error"})
        return started, msgs[-1]


def test_detached_session_continues_exactly_in_another_process(here, other):
    x = (np.random.default_rng(0).standard_normal(1500) * 0.3).astype(np.float32)
    cut = 701  # not a frame multiple: the snapshot carries a partial frame

    async def main():
        async with websockets.connect(here.ws_url("tiny")) as ws:
            await ws.send(json.dumps(START))
            started = json.loads(await ws.recv())
            assert started["snapshots"] is True
            sid = started["session_id"]
            await ws.send(encode(x[:cut, None], "f32le"))
            await asyncio.sleep(0.3)
        await asyncio.sleep(0.5)  # detach -> snapshot stored, lease released
        # resend from 600: the other process skips the 101 duplicates it restored
        return await _finish(other.ws(), sid, 600, x[600:])

    started, final = asyncio.run(main())
    assert started["type"] == "started" and started["offset"] == cut, started
    assert final["type"] == "final" and final["offset"] == len(x), final
    assert_probs_close(final["probabilities"], batch(here.base_url, x), 1e-5)
    assert metric(other.base, "s4d_sessions_restored_total") >= 1


def test_resume_refuses_gap_and_unknown(here, other):
    async def main():
        async with websockets.connect(here.ws_url("tiny")) as ws:
            await ws.send(json.dumps(START))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(encode(np.zeros((300, 1), np.float32), "f32le"))
            await asyncio.sleep(0.3)
        await asyncio.sleep(0.5)
        gap, _ = await _finish(other.ws(), sid, 400, np.zeros(10, np.float32))
        unknown, _ = await _finish(other.ws(), "e0-nosuchsession", 0, np.zeros(10, np.float32))
        return gap, unknown

    gap, unknown = asyncio.run(main())
    assert gap["type"] == "error" and gap["code"] == "offset_gap", gap
    assert unknown["type"] == "error" and unknown["code"] == "unknown_session", unknown


def test_operator_moves_a_live_session_by_hand(here, other):
    x = (np.random.default_rng(1).standard_normal(1000) * 0.3).astype(np.float32)

    async def main():
        ws = await websockets.connect(here.ws_url("tiny"))
        await ws.send(json.dumps(START))
        sid = json.loads(await ws.recv())["session_id"]
        await ws.send(encode(x[:500, None], "f32le"))
        await asyncio.sleep(0.3)
        await ws.close()
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(timeout=30) as c:
            snap = await c.get(f"{here.base_url}/v1/sessions/{sid}/snapshot")
            assert snap.status_code == 200, snap.text
            assert snap.headers["content-type"] == "application/octet-stream"
            put = await c.put(f"{other.base}/v1/sessions/{sid}", content=snap.content)
            assert put.status_code == 200, put.text
            assert put.json()["offset"] == 500 and put.json()["model"] == "tiny"
            again = await c.put(f"{other.base}/v1/sessions/{sid}", content=snap.content)
            assert again.status_code == 409 and again.json()["error"]["code"] == "session_busy"
            wrong_id = await c.put(f"{other.base}/v1/sessions/other-id", content=snap.content)
            assert wrong_id.status_code == 400
            bad = await c.post(f"{other.base}/v1/sessions/restore", content=b"garbage" * 10)
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "snapshot_corrupt"
            missing = await c.get(f"{other.base}/v1/sessions/e0-none/snapshot")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "unknown_session"
        return await _finish(other.ws(), sid, 500, x[500:])

    started, final = asyncio.run(main())
    assert started["offset"] == 500
    assert final["type"] == "final" and final["offset"] == len(x)
    assert_probs_close(final["probabilities"], batch(here.base_url, x), 1e-5)


def test_snapshot_of_other_weights_is_refused(here, redis, make_checkpoint, tmp_path):
    """Same model name, other weights: the resume and the restore route say so clearly."""
    make_checkpoint(tmp_path, "tiny", *_tiny_config(), seed=99)
    x = np.zeros(300, np.float32)

    async def main():
        async with websockets.connect(here.ws_url("tiny")) as ws:
            await ws.send(json.dumps(START))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(encode(x[:, None], "f32le"))
            await asyncio.sleep(0.3)
        await asyncio.sleep(0.5)
        return sid

    sid = asyncio.run(main())
    snap = httpx.get(f"{here.base_url}/v1/sessions/{sid}/snapshot", timeout=10).content
    other_weights = SubServer(tmp_path, redis.url)
    try:
        msg, _ = asyncio.run(_finish(other_weights.ws(), sid, 300, x[:0]))
        assert msg["type"] == "error" and msg["code"] == "snapshot_model_mismatch", msg
        r = httpx.post(f"{other_weights.base}/v1/sessions/restore", content=snap, timeout=10)
        assert r.status_code == 409 and r.json()["error"]["code"] == "snapshot_model_mismatch"
    finally:
        other_weights.stop()
    # the refused resume left the session to its owner: it still resumes on the right weights
    started, final = asyncio.run(_finish(here.ws_url("tiny"), sid, 300, x[:0]))
    assert started["type"] == "started" and final["type"] == "final", (started, final)


async def _detached_session(url: str, n: int = 300) -> str:
    """A session fed `n` zeros, then detached (so its snapshot is stored, lease released)."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps(START))
        sid = json.loads(await ws.recv())["session_id"]
        await ws.send(encode(np.zeros((n, 1), np.float32), "f32le"))
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.5)
    return sid


def test_stored_snapshot_of_another_session_is_corrupt(here, other, redis):
    """Snapshot bytes stored under one id that name another session (a copied key, a damaged
    header: the checksum covers the tensors only) were installed under the other id: the
    client resuming A was handed session B on `other`."""
    import redis as redis_py

    a, b = (asyncio.run(_detached_session(here.ws_url("tiny"))) for _ in range(2))
    r = redis_py.Redis(port=redis.port)
    try:
        r.set(f"s4d:{{{a}}}:snap", r.get(f"s4d:{{{b}}}:snap"))
    finally:
        r.close()
    msg, _ = asyncio.run(_finish(other.ws(), a, 300, np.zeros(0, np.float32)))
    assert msg["type"] == "error" and msg["code"] == "snapshot_corrupt", msg
    started, final = asyncio.run(_finish(here.ws_url("tiny"), b, 300, np.zeros(0, np.float32)))
    assert started["type"] == "started" and started["session_id"] == b, started
    assert final["type"] == "final" and final["offset"] == 300, final


def test_unreadable_stored_bytes_do_not_close_the_good_local_copy(here, redis):
    """Garbage under a detached session's snapshot key made its own replica take the bytes
    for another owner's newer snapshot: it closed its good copy, then refused the resume
    (snapshot_corrupt): the session was lost although this replica held it intact."""
    import redis as redis_py

    sid = asyncio.run(_detached_session(here.ws_url("tiny")))
    r = redis_py.Redis(port=redis.port)
    try:
        r.set(f"s4d:{{{sid}}}:snap", b"\xff" * 64)
    finally:
        r.close()
    started, final = asyncio.run(_finish(here.ws_url("tiny"), sid, 300, np.zeros(0, np.float32)))
    assert started["type"] == "started" and started["offset"] == 300, started
    assert final["type"] == "final" and final["offset"] == 300, final


def test_restore_of_offsets_past_64_bits_is_refused_without_a_leak(here):
    """A snapshot whose offsets do not fit the engine's int64 counters was a 500
    (OverflowError) that kept the state slot it had allocated: slab bytes grew per request."""
    from safetensors.numpy import save as st_save

    from server import snapshot as snapshots

    sid = asyncio.run(_detached_session(here.ws_url("tiny")))
    data = httpx.get(f"{here.base_url}/v1/sessions/{sid}/snapshot", timeout=10).content
    meta = dict(snapshots.read_metadata(data))
    n = int(meta["received"]) - int(meta["consumed"])
    meta.update(session_id="huge-offsets", consumed=str(2**63), received=str(2**63 + n))
    bad = st_save(snapshots.st_load(data), metadata=meta)
    before = metric(here.base_url, "s4d_state_slab_bytes_in_use")
    for _ in range(3):
        r = httpx.post(f"{here.base_url}/v1/sessions/restore", content=bad, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "snapshot_corrupt", r.text
    assert metric(here.base_url, "s4d_state_slab_bytes_in_use") == before


def _tiny_config():
    from conftest import TINY_MODELS

    return TINY_MODELS["tiny"]


def test_stale_owner_is_fenced(here, other):
    """The session is resumed elsewhere while its first connection still looks alive: the
    new owner takes the lease after lease_wait_s; the old owner's next write is refused and it
    closes its copy with session_moved."""
    x = (np.random.default_rng(2).standard_normal(800) * 0.3).astype(np.float32)

    async def main():
        ws = await websockets.connect(here.ws_url("tiny"))
        await ws.send(json.dumps(START))
        sid = json.loads(await ws.recv())["session_id"]
        await ws.send(encode(x[:400, None], "f32le"))
        await asyncio.sleep(0.6)  # at least one wave stored it
        started, final = await asyncio.wait_for(_finish(other.ws(), sid, 0, x), 30)
        assert started["type"] == "started", started
        msgs = await asyncio.wait_for(_recv_until(ws, {"error"}), 10)
        await asyncio.wait_for(ws.wait_closed(), 10)
        return msgs[-1], ws.close_code, started, final

    moved, code, started, final = asyncio.run(main())
    assert moved["code"] == "session_moved" and code == 1008, moved
    assert started["type"] == "started" and started["offset"] <= 400
    assert final["offset"] == len(x)
    assert_probs_close(final["probabilities"], batch(here.base_url, x), 1e-5)


def test_drain_with_store_parks_sessions(start_server, checkpoint_dir, redis, other):
    """SIGTERM-like stop with a store: each stream gets shutting_down + resume + 1001 and no
    final; the session continues on another server from the parked offset."""
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", **_store_settings(redis))
    x = (np.random.default_rng(3).standard_normal(900) * 0.3).astype(np.float32)

    async def main():
        socks = []
        for _ in range(3):
            ws = await websockets.connect(srv.ws_url("tiny"))
            await ws.send(json.dumps(START))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(encode(x[:450, None], "f32le"))
            socks.append((ws, sid))
        await asyncio.sleep(0.3)
        stopper = asyncio.get_running_loop().run_in_executor(None, srv.stop)
        out = []
        for ws, sid in socks:
            msgs = await _recv_until(ws, {"error", "final"})
            await ws.wait_closed()
            out.append((sid, msgs[-1], ws.close_code))
        await stopper
        return out

    for sid, msg, code in asyncio.run(main()):
        assert code == 1001 and msg["type"] == "error", msg
        assert msg["code"] == "shutting_down" and msg["resume"] is True and msg["offset"] == 450
        started, final = asyncio.run(_finish(other.ws(), sid, 450, x[450:]))
        assert started["offset"] == 450 and final["type"] == "final", (started, final)
        assert_probs_close(final["probabilities"], batch(other.base, x), 1e-5)


def test_session_ids_the_store_cannot_hold_are_client_errors(here):
    """Ids past the store's 256 characters (or empty) reached its id check as ValueError:
    GET .../snapshot was a 500, and a restore of such a snapshot a 500 that left the session
    installed (s4d_sessions_active grew by one each time)."""
    from safetensors.numpy import save as st_save

    from server import snapshot as snapshots

    r = httpx.get(f"{here.base_url}/v1/sessions/{'x' * 300}/snapshot", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_session", r.text
    sid = asyncio.run(_detached_session(here.ws_url("tiny")))
    data = httpx.get(f"{here.base_url}/v1/sessions/{sid}/snapshot", timeout=10).content
    meta = dict(snapshots.read_metadata(data))
    before = metric(here.base_url, "s4d_sessions_active")
    for bad_id in ("y" * 300, ""):
        bad = st_save(snapshots.st_load(data), metadata={**meta, "session_id": bad_id})
        r = httpx.post(f"{here.base_url}/v1/sessions/restore", content=bad, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["code"] == "snapshot_corrupt", r.text
    assert metric(here.base_url, "s4d_sessions_active") == before


def test_drain_with_a_hung_store_sends_every_stream_its_final(start_server, checkpoint_dir,
                                                             tmp_path):
    """SIGTERM while Redis hangs: parks reach the store one at a time, each waiting out the
    store's timeout, and each park had the whole graceful_timeout_s, so the `final` fallback
    never ran: all but one stream were cut without a message or a close frame."""
    r = RedisServer(tmp_path / "redis").start()
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", graceful_timeout_s=4.0,
                       **_store_settings(r))
    x = np.zeros(450, np.float32)

    async def ending(ws) -> tuple[dict | None, int | None]:
        try:
            msgs = await _recv_until(ws, {"error", "final"})
        except websockets.ConnectionClosed:
            return None, ws.close_code
        await ws.wait_closed()
        return msgs[-1], ws.close_code

    async def main():
        socks = []
        for _ in range(6):
            ws = await websockets.connect(srv.ws_url("tiny"))
            await ws.send(json.dumps(START))
            assert json.loads(await ws.recv())["type"] == "started"
            await ws.send(encode(x[:, None], "f32le"))
            socks.append(ws)
        await asyncio.sleep(0.5)
        r.pause()
        stopper = asyncio.get_running_loop().run_in_executor(None, srv.stop)
        out = await asyncio.gather(*(ending(ws) for ws in socks))
        await stopper
        return out

    try:
        ends = asyncio.run(main())
    finally:
        r.stop()
    for msg, code in ends:
        assert msg is not None and code in (1000, 1001), (msg, code)
        assert msg["type"] == "final" and msg["offset"] == 450, msg


def test_session_ended_while_the_store_hung_is_not_resumable_later(start_server, checkpoint_dir,
                                                                   tmp_path):
    """`end` deletes the snapshot so that no resume brings the session back; with Redis hung
    at that moment the delete failed once and was never retried: after Redis came back the
    ended session (its final delivered) resumed on another replica for the idle TTL."""
    import redis as redis_py

    r = RedisServer(tmp_path / "redis").start()
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", **_store_settings(r))
    other_here = SubServer(checkpoint_dir, r.url)

    async def main():
        async with websockets.connect(srv.ws_url("tiny")) as ws:
            await ws.send(json.dumps(START))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(encode(np.zeros((300, 1), np.float32), "f32le"))
            # a wave stored it; the waves go on every 0.2 s, so Redis may hang with a put in
            # flight that it applies when it wakes, after (or before) the failed delete
            with redis_py.Redis(port=r.port) as probe:
                deadline = time.monotonic() + 10
                while not probe.exists(f"s4d:{{{sid}}}:snap") and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            r.pause()
            await ws.send(json.dumps({"type": "end"}))
            final = (await _recv_until(ws, {"final", "error"}))[-1]
        await asyncio.sleep(2.5)  # the delete has failed
        return sid, final

    client = None
    try:
        sid, final = asyncio.run(main())
        r.resume()
        client = redis_py.Redis(port=r.port)
        deadline = time.monotonic() + 10
        while client.exists(f"s4d:{{{sid}}}:snap") and time.monotonic() < deadline:
            time.sleep(0.1)
        started, _ = asyncio.run(_finish(other_here.ws(), sid, 300, np.zeros(0, np.float32)))
    finally:
        r.resume()
        if client is not None:
            client.close()
        other_here.stop()
        r.stop()
    assert final["type"] == "final" and final["offset"] == 300, final
    assert started["type"] == "error" and started["code"] == "unknown_session", started


def test_redis_down_streams_go_on_then_snapshots_resume(start_server, checkpoint_dir,
                                                        tmp_path, caplog):
    r = RedisServer(tmp_path / "redis").start()
    srv = start_server(checkpoints=checkpoint_dir, models="tiny", session_store=r.url,
                       snapshot_interval_s=0.2, idle_ttl_s=30.0)
    x = (np.random.default_rng(4).standard_normal(16000) * 0.3).astype(np.float32)
    caplog.set_level("WARNING", logger="s4d.persistence")

    async def main():
        async with websockets.connect(srv.ws_url("tiny")) as ws:
            await ws.send(json.dumps(START))
            assert json.loads(await ws.recv())["type"] == "started"
            step = 400
            down_at, up_at = 4000, 10000
            for i in range(0, len(x), step):
                if i == down_at:
                    before = metric(srv.base_url, "s4d_snapshots_total")
                    r.kill()
                if i == up_at:
                    failures = metric(srv.base_url, "s4d_snapshot_failures_total")
                    r.start()
                    after_up = metric(srv.base_url, "s4d_snapshots_total")
                await ws.send(encode(x[i:i + step, None], "f32le"))
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            await ws.send(json.dumps({"type": "end"}))
            final = (await _recv_until(ws, {"final", "error"}))[-1]
            return before, failures, after_up, final

    try:
        before, failures, after_up, final = asyncio.run(main())
    finally:
        r.stop()
    assert before >= 1  # snapshots were stored while Redis was up
    assert failures >= 1  # ...failed (counted) while it was down
    assert final["type"] == "final" and final["offset"] == len(x)  # the stream went on
    assert_probs_close(final["probabilities"], batch(srv.base_url, x), 1e-5)
    assert metric(srv.base_url, "s4d_snapshots_total") > after_up  # ...and resumed
    assert any("session store unavailable" in rec.getMessage() for rec in caplog.records)
    assert any("reachable again" in rec.getMessage() for rec in caplog.records)
