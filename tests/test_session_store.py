"""Session store (server/session_store.py): the same suite on InProcessStore and a real Redis.

Leases are exclusive, fencing tokens grow, a stale owner's writes are refused after a steal,
TTLs expire snapshots and leases; a killed or hung Redis gives StoreUnavailable within the
timeout (never a hang) and a restarted one works again.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest

from server.session_store import (
    InProcessStore,
    LeaseHeldError,
    RedisStore,
    StaleLeaseError,
    StoreUnavailable,
    open_store,
)
from tests.redis_server import BINARY, SKIP_REASON, RedisServer

pytestmark = pytest.mark.timeout(120)


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if BINARY is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def make_store(request):
    """`make_store() -> SessionStore` with a fresh key prefix; closed by the test's own loop."""
    if request.param == "memory":
        return lambda: InProcessStore()
    server = request.getfixturevalue("redis_server")
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    return lambda: RedisStore(server.url, prefix=prefix, timeout_s=0.5)


def blob(n: int = 132_000, seed: int = 0) -> bytes:
    """Binary bytes with every byte value (zeros included), like a snapshot."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_put_needs_the_lease_and_round_trips_bytes(make_store):
    async def main():
        store = make_store()
        try:
            assert await store.get("s1") is None
            with pytest.raises(StaleLeaseError):
                await store.put("s1", b"x", 10, token=1)
            token = await store.acquire("s1", "replica-a", 10)
            data = blob()
            await store.put("s1", data, 10, token)
            assert await store.get("s1") == data
            await store.put("s1", b"newer", 10, token)
            assert await store.get("s1") == b"newer"
            assert await store.get("s2") is None
        finally:
            await store.close()

    run(main())


def test_lease_is_exclusive_and_a_steal_fences_the_old_owner(make_store):
    async def main():
        store = make_store()
        try:
            ta = await store.acquire("s", "a", 10)
            await store.put("s", b"from-a", 10, ta)
            with pytest.raises(LeaseHeldError) as e:
                await store.acquire("s", "b", 10)
            assert e.value.owner == "a" and 0 < e.value.ttl_ms <= 10_000
            ta2 = await store.acquire("s", "a", 10)  # same owner again: a new token
            assert ta2 > ta
            with pytest.raises(StaleLeaseError):
                await store.put("s", b"old-token", 10, ta)
            tb = await store.acquire("s", "b", 10, steal=True)
            assert tb > ta2
            with pytest.raises(StaleLeaseError) as e:
                await store.put("s", b"stale-a", 10, ta2)
            assert e.value.current == tb
            with pytest.raises(StaleLeaseError):
                await store.renew("s", "a", ta2, 10)
            with pytest.raises(StaleLeaseError):
                await store.delete("s", ta2)
            assert await store.release("s", "a", ta2) is False
            assert await store.get("s") == b"from-a"  # nothing the stale owner sent landed
            await store.put("s", b"from-b", 10, tb)
            with pytest.raises(LeaseHeldError):
                await store.acquire("s", "a", 10)
            assert await store.get("s") == b"from-b"
            with pytest.raises(StaleLeaseError):  # the token is b's, but the owner is not
                await store.renew("s", "a", tb, 10)
        finally:
            await store.close()

    run(main())


def test_put_many_stores_each_owned_item_and_reports_stale_ones(make_store):
    async def main():
        store = make_store()
        try:
            tokens = [await store.acquire(f"m{i}", "a", 10) for i in range(300)]
            stolen = await store.acquire("m1", "b", 10, steal=True)
            items = [(f"m{i}", blob(64, seed=i), t) for i, t in enumerate(tokens)]
            results = await store.put_many(items, 10, lease_ttl_s=20)
            assert isinstance(results[1], StaleLeaseError) and results[1].current == stolen
            assert all(r is None for i, r in enumerate(results) if i != 1)
            assert await store.get("m1") is None
            for i in (0, 2, 150, 299):
                assert await store.get(f"m{i}") == blob(64, seed=i)
            assert await store.put_many([], 10) == []
        finally:
            await store.close()

    run(main())


def test_concurrent_acquires_have_one_winner(make_store):
    async def main():
        store = make_store()
        try:
            results = await asyncio.gather(
                *(store.acquire("race", f"owner-{i}", 10) for i in range(16)),
                return_exceptions=True)
            winners = [r for r in results if isinstance(r, int)]
            assert len(winners) == 1, results
            assert all(isinstance(r, LeaseHeldError) for r in results if not isinstance(r, int))
        finally:
            await store.close()

    run(main())


def test_expired_lease_can_be_taken_and_tokens_keep_growing(make_store):
    async def main():
        store = make_store()
        try:
            t1 = await store.acquire("s", "dead-replica", 0.2)
            await store.put("s", b"before-crash", 30, t1)
            with pytest.raises(LeaseHeldError):
                await store.acquire("s", "new-replica", 10)
            await asyncio.sleep(0.35)  # the dead owner never renews
            t2 = await store.acquire("s", "new-replica", 10)
            assert t2 > t1
            assert await store.get("s") == b"before-crash"  # the snapshot outlives the lease
            with pytest.raises(StaleLeaseError):
                await store.put("s", b"zombie", 30, t1)
            assert await store.release("s", "new-replica", t2) is True
            t3 = await store.acquire("s", "third", 10)  # released: free without steal
            assert t3 > t2
        finally:
            await store.close()

    run(main())


def test_snapshots_expire_with_their_ttl(make_store):
    async def main():
        store = make_store()
        try:
            token = await store.acquire("s", "a", 10)
            await store.put("s", b"short", 0.2, token)
            assert await store.get("s") == b"short"
            await asyncio.sleep(0.35)
            assert await store.get("s") is None
            await store.put("s", b"long", 10, token)  # the lease itself is still live
            assert await store.get("s") == b"long"
        finally:
            await store.close()

    run(main())


def test_renew_and_put_with_lease_ttl_keep_the_lease(make_store):
    async def main():
        store = make_store()
        try:
            token = await store.acquire("s", "a", 0.3)
            await asyncio.sleep(0.15)
            await store.renew("s", "a", token, 0.5)
            await asyncio.sleep(0.25)  # past the first TTL
            with pytest.raises(LeaseHeldError):
                await store.acquire("s", "b", 10)
            await store.put("s", b"x", 10, token, lease_ttl_s=0.5)
            await asyncio.sleep(0.3)
            with pytest.raises(LeaseHeldError):
                await store.acquire("s", "b", 10)
            await asyncio.sleep(0.35)
            assert await store.acquire("s", "b", 10) > token
        finally:
            await store.close()

    run(main())


def test_delete_ends_the_session(make_store):
    async def main():
        store = make_store()
        try:
            token = await store.acquire("s", "a", 10)
            await store.put("s", b"x", 10, token)
            with pytest.raises(StaleLeaseError):
                await store.delete("s", token + 1)
            assert await store.get("s") == b"x"
            await store.delete("s", token)
            assert await store.get("s") is None
            assert await store.acquire("s", "b", 10) > token  # the lease went with it
        finally:
            await store.close()

    run(main())


def test_bad_arguments_are_value_errors(make_store):
    async def main():
        store = make_store()
        try:
            with pytest.raises(ValueError):
                await store.get("")
            with pytest.raises(ValueError):
                await store.acquire("x" * 300, "a", 10)
            with pytest.raises(ValueError):
                await store.acquire("s", "a", 0)
            await store.ping()
            assert await store.healthy()
        finally:
            await store.close()

    run(main())


# ---- Redis only -----------------------------------------------------------------------------
def test_every_redis_key_has_a_ttl(redis_server):
    import redis

    prefix = f"t{uuid.uuid4().hex[:8]}:"

    async def main():
        store = RedisStore(redis_server.url, prefix=prefix)
        try:
            for i in range(5):
                token = await store.acquire(f"s{i}", "a", 30)
                await store.put(f"s{i}", b"data", 60, token)
            await store.release("s0", "a", token=await store.acquire("s0", "a", 30))
        finally:
            await store.close()

    run(main())
    r = redis.Redis.from_url(redis_server.url)
    keys = sorted(k.decode() for k in r.scan_iter(f"{prefix}*"))
    assert f"{prefix}{{s1}}:snap" in keys and f"{prefix}{{s1}}:lease" in keys
    assert f"{prefix}{{s0}}:lease" not in keys  # released
    for k in keys:
        assert 0 < r.pttl(k) <= 60_000, k
    r.close()


def test_redis_killed_paused_and_restarted(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    store = RedisStore(server.url, timeout_s=0.3)
    deadline = 2 * 0.3 + 0.5 + 0.5  # the store's overall per-call deadline, plus slack

    async def timed(coro):
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await coro
        return time.monotonic() - t0

    async def main():
        token = await store.acquire("s", "a", 30)
        await store.put("s", b"v1", 30, token)

        server.kill()
        waits = [await timed(store.get("s")), await timed(store.put("s", b"v2", 30, token)),
                 await timed(store.acquire("t", "a", 30)), await timed(store.ping()),
                 await timed(store.put_many([("s", b"v2", token)], 30))]
        assert max(waits) < deadline, waits
        assert not await store.healthy()

        server.start()  # same port, empty (no persistence)
        assert await store.healthy()
        assert await store.get("s") is None
        with pytest.raises(StaleLeaseError):  # the lease died with Redis' memory
            await store.put("s", b"v2", 30, token)
        token2 = await store.acquire("s", "a", 30)  # scripts are loaded again transparently
        assert token2 > token
        await store.put("s", b"v2", 30, token2)
        assert await store.get("s") == b"v2"

        server.pause()  # hung: connections open, no answers
        try:
            waits = [await timed(store.get("s")), await timed(store.put("s", b"v3", 30, token2))]
            assert max(waits) < deadline, waits
        finally:
            server.resume()
        assert await store.get("s") == b"v2"
        await store.put("s", b"v3", 30, token2)
        assert await store.get("s") == b"v3"

    try:
        run(main())
        run(store.close())
    finally:
        server.stop()


def test_unreachable_redis_at_start_is_unavailable_not_a_crash():
    from bench.serve import free_port

    store = open_store(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)

    async def main():
        t0 = time.monotonic()
        assert not await store.healthy()
        with pytest.raises(StoreUnavailable, match="127.0.0.1"):
            await store.acquire("s", "a", 10)
        assert time.monotonic() - t0 < 3
        await store.close()

    run(main())


def test_open_store_urls():
    assert isinstance(open_store("memory://"), InProcessStore)
    assert isinstance(open_store(None), InProcessStore)
    assert isinstance(open_store("redis://127.0.0.1:6390/2", prefix="x:"), RedisStore)
    with pytest.raises(ValueError, match="memory://"):
        open_store("mysql://localhost/db")
