"""A session belongs to the API key that opened it on every replica (issues 11 + 12): the
snapshot carries the key's name (`owner_key`), so a session resumed from the store on another
server process, or after its server is gone, is still refused to another key
(`session_forbidden`), and the operator routes follow the same rule.

Two `python -m server` processes (their own engines) with the same keys file, sharing Debian's
redis-server (skipped without it), all on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import numpy as np
import pytest
import websockets
from conftest import assert_probs_close, encode
from redis_server import RedisServer
from test_resume import START, SubServer, _recv_until

from server.auth import key_line, new_key
from server.snapshot import read_metadata

ALICE, BOB, CAROL = new_key(), new_key(), new_key()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    r = RedisServer(tmp_path_factory.mktemp("redis-owner")).start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("owner-keys") / "keys.txt"
    path.write_text("\n".join([key_line("alice", ALICE), key_line("bob", BOB),
                               key_line("carol", CAROL, max_sessions=1)]) + "\n")
    return path


@pytest.fixture(scope="module")
def replicas(checkpoint_dir, redis, keys_file):
    a = SubServer(checkpoint_dir, redis.url, "--api-keys-file", str(keys_file))
    try:
        b = SubServer(checkpoint_dir, redis.url, "--api-keys-file", str(keys_file))
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def _open(url: str, key: str, x: np.ndarray) -> str:
    """Open a session with `key`, send `x`, disconnect without `end`: it detaches and its
    snapshot (with its owner) goes to the store."""
    async with websockets.connect(url, additional_headers=_auth(key)) as ws:
        await ws.send(json.dumps(START))
        started = json.loads(await ws.recv())
        assert started["type"] == "started" and started["snapshots"] is True, started
        await ws.send(encode(x[:, None], "f32le"))
        await asyncio.sleep(0.3)
        return started["session_id"]


async def _resume(url: str, key: str, sid: str, offset: int, rest: np.ndarray | None):
    """(first message, last message, close code) of a resume with `key`."""
    async with websockets.connect(url, additional_headers=_auth(key)) as ws:
        await ws.send(json.dumps({**START, "session_id": sid, "offset": offset}))
        first = json.loads(await ws.recv())
        if first["type"] != "started":
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as exc:
                return first, first, exc.rcvd.code if exc.rcvd else None
            raise AssertionError("the refused resume was not closed")
        await ws.send(encode(rest[:, None], "f32le"))
        await ws.send(json.dumps({"type": "end"}))
        msgs = await _recv_until(ws, {"final", "error"})
        return first, msgs[-1], None


def test_stored_session_is_refused_to_another_key_on_another_replica(replicas):
    a, b = replicas
    x = (np.random.default_rng(7).standard_normal(1400) * 0.3).astype(np.float32)
    cut = 650

    async def main():
        sid = await _open(a.ws(), ALICE, x[:cut])
        await asyncio.sleep(0.5)  # detached on A: stored with owner "alice", lease released
        stolen = await _resume(b.ws(), BOB, sid, cut, x[cut:])  # B does not hold it
        again = await _resume(a.ws(), BOB, sid, cut, x[cut:])  # nor does A let bob in
        mine = await _resume(b.ws(), ALICE, sid, cut, x[cut:])
        return sid, stolen, again, mine

    sid, stolen, again, mine = asyncio.run(main())
    for first, _, close in (stolen, again):
        assert first["type"] == "error" and first["code"] == "session_forbidden", first
        assert close == 1008
    started, final, _ = mine
    assert started["type"] == "started" and started["offset"] == cut, started
    assert final["type"] == "final" and final["offset"] == len(x), final
    r = httpx.post(f"{b.base}/v1/models/tiny/predict", json={"inputs": [x.tolist()]},
                   headers=_auth(ALICE), timeout=60)
    assert r.status_code == 200, r.text
    assert_probs_close(final["probabilities"], r.json()["predictions"][0]["probabilities"], 1e-5)


def test_owner_survives_the_replica_that_opened_it(checkpoint_dir, redis, keys_file):
    """The replica that opened the session is gone (SIGKILL after its snapshot): a fresh
    engine restores it from Redis for its key only."""
    x = (np.random.default_rng(8).standard_normal(900) * 0.3).astype(np.float32)
    first = SubServer(checkpoint_dir, redis.url, "--api-keys-file", str(keys_file))
    try:
        sid = asyncio.run(_open(first.ws(), ALICE, x[:500]))
        asyncio.run(asyncio.sleep(0.6))
    finally:
        os.killpg(first.proc.pid, signal.SIGKILL)  # the whole group: front-end and engine
        first.proc.wait(10)
    fresh = SubServer(checkpoint_dir, redis.url, "--api-keys-file", str(keys_file),
                      "--lease-wait", "0.1")
    try:
        bob = asyncio.run(_resume(fresh.ws(), BOB, sid, 500, x[500:]))
        alice = asyncio.run(_resume(fresh.ws(), ALICE, sid, 500, x[500:]))
    finally:
        fresh.stop()
    assert bob[0]["code"] == "session_forbidden" and bob[2] == 1008
    assert alice[0]["type"] == "started" and alice[1]["type"] == "final", alice


def test_operator_routes_follow_the_owner(replicas):
    a, b = replicas
    x = np.zeros(300, np.float32)
    sid = asyncio.run(_open(a.ws(), ALICE, x))
    asyncio.run(asyncio.sleep(0.5))
    url = f"{b.base}/v1/sessions/{sid}/snapshot"
    r = httpx.get(url, headers=_auth(BOB), timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "session_forbidden", r.text
    r = httpx.get(url, headers=_auth(ALICE), timeout=30)
    assert r.status_code == 200, r.text
    blob = r.content
    assert read_metadata(blob)["owner_key"] == "alice"
    assert ALICE not in blob.decode("latin-1")  # the name, never the key
    # bob may not install alice's session, nor overwrite it with a snapshot he made his own
    r = httpx.put(f"{b.base}/v1/sessions/{sid}", content=blob, headers=_auth(BOB), timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "session_forbidden"
    bob_sid = asyncio.run(_open(a.ws(), BOB, x))
    asyncio.run(asyncio.sleep(0.5))
    bobs = httpx.get(f"{a.base}/v1/sessions/{bob_sid}/snapshot", headers=_auth(BOB), timeout=30)
    assert bobs.status_code == 200
    forged = _as_session(bobs.content, sid)
    r = httpx.put(f"{b.base}/v1/sessions/{sid}", content=forged, headers=_auth(BOB), timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "session_forbidden", r.text
    # alice still owns an intact session
    r = httpx.put(f"{b.base}/v1/sessions/{sid}", content=blob, headers=_auth(ALICE), timeout=30)
    assert r.status_code == 200 and r.json()["offset"] == 300, r.text


def _as_session(blob: bytes, sid: str) -> bytes:
    """The same snapshot claiming another session id (what a client can forge)."""
    from server import snapshot as snapshots

    snap = snapshots.decode(blob)
    fields = {k: getattr(snap, k) for k in snap.__dataclass_fields__}
    fields["session_id"] = sid
    return snapshots.encode(snapshots.Snapshot(**fields))


def test_key_quota_counts_open_sessions_only(replicas):
    """carol may hold 1 session: after it ends she may open another (the count goes down)."""
    a, _ = replicas

    async def one():
        async with websockets.connect(a.ws(), additional_headers=_auth(CAROL)) as ws:
            await ws.send(json.dumps(START))
            started = json.loads(await ws.recv())
            if started["type"] != "started":
                return started
            await ws.send(encode(np.zeros((100, 1), np.float32), "f32le"))
            await ws.send(json.dumps({"type": "end"}))
            return (await _recv_until(ws, {"final", "error"}))[-1]

    async def main():
        return [await one() for _ in range(3)]

    for msg in asyncio.run(main()):
        assert msg["type"] == "final", msg
