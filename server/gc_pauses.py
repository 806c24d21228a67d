"""The cyclic garbage collector's pauses: fewer (start-up objects frozen out of its view) and
seen (a histogram per process role). A collection stops the whole process, so every stream
the process serves waits for it."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Callable


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, models, torch's and numpy's own) out of the cyclic
    collector's view: a full collection of an engine process walked ~190,000 of them, 30-38 ms
    with the whole process stopped (2-core machine), a pause every stream would feel. Steady
    streaming rarely triggers one (24 kws streams for 20 s at --workers 1: young collections
    only, 7 in the engine and 13 in the front-end, by `s4d_gc_pause_seconds`), but anything
    that does then costs microseconds."""
    gc.collect()
    gc.freeze()


class PauseLog:
    """Collector pauses, noted inside the collector's callback and handed on later.

    The callback runs wherever an allocation starts a collection, also in the middle of a
    metric update that holds prometheus_client's (non-reentrant) lock: observing a metric
    there deadlocked a front-end. So the callback only appends to a deque; `drain` (from the
    event loop) passes the pauses on."""

    def __init__(self, maxlen: int = 100_000):
        self.pauses: deque[tuple[int, float, float]] = deque(maxlen=maxlen)
        self._started = (0.0, 0.0)

    def on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
        else:
            wall, cpu = self._started
            self.pauses.append((info["generation"], time.perf_counter() - wall,
                                time.thread_time() - cpu))

    def drain(self, observe: Callable[[int, float, float], None]) -> None:
        while self.pauses:
            observe(*self.pauses.popleft())


def watch_pauses(observe: Callable[[int, float, float], None], period_s: float = 1.0
                 ) -> Callable[[], None]:
    """`observe(generation, seconds, cpu_seconds)` for every collection of this process,
    called from the running event loop every `period_s`; returns the function that stops
    watching. The CPU time is the collecting thread's: a pause much longer than it was the
    process waiting for a core (descheduled mid-collection), not the collector's own work."""
    log = PauseLog()
    gc.callbacks.append(log.on_gc)

    async def pass_on() -> None:
        while True:
            await asyncio.sleep(period_s)
            log.drain(observe)

    task = asyncio.get_running_loop().create_task(pass_on(), name="gc-pauses")

    def stop() -> None:
        task.cancel()
        if log.on_gc in gc.callbacks:
            gc.callbacks.remove(log.on_gc)
        log.drain(observe)

    return stop
