"""Event-loop lag: how late a timer fires in this process.

Whatever stalls a process's event loop (a long callback, a collection, the GIL held by another
thread, the process waiting for a core) delays every stream the process serves by as much, and
a stream's latency alone cannot say which process it was. Each process samples its own loop, so
`s4d_event_loop_lag_seconds{process=...}` names the one that stalled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def watch_loop_lag(observe: Callable[[float], None], period_s: float = 0.01
                   ) -> Callable[[], None]:
    """`observe(seconds)` every `period_s` with how much later than asked the loop woke up;
    returns the function that stops watching. Wall clock (perf_counter): the loop's own clock
    may tick in whole milliseconds (uvloop)."""
    loop = asyncio.get_running_loop()

    async def sample() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(period_s)
            observe(max(0.0, time.perf_counter() - t0 - period_s))

    task = loop.create_task(sample(), name="loop-lag")
    return task.cancel
