"""Session store health: a periodic ping, so an outage shows while the server is idle too.

Snapshot failures (`s4d_snapshot_failures_total`) show a store outage only once a session is
stored or resumed. This check pings the store every `store_health_interval_s`, a ping slower
than `store_health_timeout_s` counting as down, and sets `s4d_session_store_up` (1/0) and
`s4d_session_store_ping_seconds`; the engine's heartbeat replies carry the same to the
front-ends, whose `/readyz` shows it under `session_store` (the replica stays ready: streams
and predictions do not need the store, server/PROTOCOL.md).

One check per replica: engine 0 runs it (the one engine of the one-process server). Every
engine of a replica holds its own client of the same store from the same host; E checks would
say the same thing E times. It pings through the client snapshots use (same pool), so it sees
what they would see.
"""

from __future__ import annotations

import asyncio
import logging
import time

from server.session_store import SessionStore, StoreUnavailable

log = logging.getLogger("s4d.store")


class StoreHealth:
    def __init__(self, store: SessionStore, *, interval_s: float, timeout_s: float, metrics):
        self.store = store
        self.interval, self.timeout = float(interval_s), float(timeout_s)
        self.up: bool | None = None  # None until the first check ends
        self.latency_s: float | None = None  # how long the last check took
        self.last_ok_unix: float | None = None  # wall clock of the last answered ping
        self._since = time.monotonic()
        self._gauges = metrics.store_health()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """The first check (at most `timeout_s`), then one every `interval_s` in the background."""
        await self.check()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="store-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> bool:
        t0 = time.perf_counter()
        error = None
        try:
            await asyncio.wait_for(self.store.ping(), self.timeout)
        except (StoreUnavailable, asyncio.TimeoutError) as exc:
            error = str(exc) or f"no answer within {self.timeout:g}s"
        except Exception as exc:  # the check must go on whatever the client raises
            log.exception("session store health check")
            error = f"{type(exc).__name__}: {exc}"
        self.latency_s = time.perf_counter() - t0
        up = error is None
        if up:
            self.last_ok_unix = time.time()
        if up != self.up:
            now = time.monotonic()
            if not up:  # a StoreUnavailable names the store without its password
                log.warning("session store health check: unreachable (%s)", error)
            elif self.up is False:
                log.warning("session store health check: reachable again after %.1fs",
                            now - self._since)
            self._since = now
        self.up = up
        up_gauge, ping_gauge = self._gauges
        up_gauge.set(1 if up else 0)
        ping_gauge.set(self.latency_s)
        return up

    def state(self) -> dict:
        """For the front-ends' /readyz (in every heartbeat reply of the engine)."""
        return {"up": self.up, "latency_s": self.latency_s, "last_ok_unix": self.last_ok_unix}
