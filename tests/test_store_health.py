"""The session store's health check (server/engine/store_health.py): `s4d_session_store_up` and
`/readyz` `session_store` follow a real redis-server (tests/redis_server.py, loopback) that is
killed, hung and restarted while the server is idle, in one process and with `--workers`.
Snapshot failures alone showed nothing until a session was stored or resumed.
"""

from __future__ import annotations

import time

import httpx
import pytest
from pydantic import ValidationError

from tests.redis_server import RedisServer
from tests.test_workers import Workers

CHECK = dict(store_health_interval_s=0.2, store_health_timeout_s=0.2)
BOUND_S = 20.0  # generous for a shared 2-core machine: the check itself takes ~0.5 s


def metric(base: str, name: str) -> float | None:
    """The value of an unlabelled series, or None when /metrics has no such series."""
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    return None


def ready(base: str) -> dict:
    r = httpx.get(f"{base}/readyz", timeout=10)
    assert r.status_code == 200, r.text  # a store down never makes the replica unready
    return r.json()


def wait_until(base: str, up: float, bound: float = BOUND_S) -> dict:
    """Poll until both the gauge and /readyz say `up`; fail after `bound` seconds."""
    deadline = time.monotonic() + bound
    while True:
        gauge, body = metric(base, "s4d_session_store_up"), ready(base)
        if gauge == up and body["session_store"]["up"] is bool(up):
            return body
        assert time.monotonic() < deadline, (gauge, body)
        time.sleep(0.1)


def test_gauge_and_readyz_follow_redis_killed_hung_and_restarted_while_idle(
        start_server, checkpoint_dir, tmp_path):
    r = RedisServer(tmp_path / "redis").start()
    srv = None
    try:
        srv = start_server(checkpoints=checkpoint_dir, models="tiny", session_store=r.url,
                           **CHECK)
        body = wait_until(srv.base_url, 1)
        store = body["session_store"]
        assert store["latency_ms"] >= 0 and store["last_ok_s_ago"] >= 0, body
        assert metric(srv.base_url, "s4d_session_store_ping_seconds") >= 0

        r.kill()  # no stream, no snapshot: only the check can notice
        store = wait_until(srv.base_url, 0)["session_store"]
        assert store["last_ok_s_ago"] is not None  # it answered before
        # ...which the snapshot counter, the only sign before, does not show
        assert metric(srv.base_url,
                      's4d_snapshot_failures_total{reason="store_unavailable"}') == 0

        r.start()  # the same port, as a restarted Redis
        wait_until(srv.base_url, 1)

        r.pause()  # a hung Redis: the port accepts, nothing answers; the ping times out
        wait_until(srv.base_url, 0)
        r.resume()
        wait_until(srv.base_url, 1)
    finally:
        if srv is not None:
            srv.stop()
        r.stop()


def test_only_a_server_with_a_store_shows_its_health(start_server, checkpoint_dir):
    mem = start_server(checkpoints=checkpoint_dir, models="tiny", session_store="memory://",
                       **CHECK)
    assert wait_until(mem.base_url, 1)["session_store"]["up"] is True
    none = start_server(checkpoints=checkpoint_dir, models="tiny")
    assert metric(none.base_url, "s4d_session_store_up") is None
    assert "s4d_session_store_up" not in httpx.get(f"{none.base_url}/metrics").text
    assert "session_store" not in ready(none.base_url)  # no value to misread as an outage


def test_store_health_settings_are_checked():
    from server.settings import Settings

    s = Settings()
    assert 0 < s.store_health_timeout_s <= s.store_health_interval_s <= 60
    for bad in (dict(store_health_interval_s=0), dict(store_health_timeout_s=0),
                dict(store_health_interval_s=1.0, store_health_timeout_s=2.0)):
        with pytest.raises(ValidationError):
            Settings(**bad)


def test_workers_check_the_store_once_per_replica(checkpoint_dir, tmp_path):
    """`--workers 2` with two engines: engine 0 alone checks (one client of the server in
    Redis while idle; the gauge is 1, front-ends write none) and every front-end's /readyz
    shows its check."""
    r = RedisServer(tmp_path / "redis").start()
    w = None
    try:
        w = Workers(checkpoint_dir, models="tiny", S4D_SESSION_STORE=r.url,
                    S4D_ENGINES_PER_DEVICE=2, S4D_DEVICE="cpu",
                    **{f"S4D_{k.upper()}": v for k, v in CHECK.items()})
        wait_until(w.base, 1)
        import redis

        with redis.Redis.from_url(r.url) as client:
            others = [c for c in client.client_list() if c["id"] != str(client.client_id())]
        assert len(others) == 1, others
        r.kill()
        wait_until(w.base, 0)
        for _ in range(10):  # new connections: the kernel spreads them over the front-ends
            assert ready(w.base)["session_store"]["up"] is False
        r.start()
        wait_until(w.base, 1)
    finally:
        if w is not None:
            w.stop()
        r.stop()
