"""The device lane: one thread per model that runs device work, stream steps first.

Stream steps (20 ms of audio for every live session) and batch `/predict` forwards share one
device thread, so the state slab is touched in submission order. Two queues instead of one FIFO:
the thread always takes a waiting stream step before the next batch job, so a long batch
request delays streams by at most one batch job, never by a queue of them.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class DeviceLane:
    def __init__(self, name: str, init: Callable[[], Any] | None = None):
        self._high: deque = deque()
        self._low: deque = deque()
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, args=(init,), name=f"s4d-{name}",
                                        daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args, priority: bool = True) -> asyncio.Future:
        """Run `fn(*args)` on the lane; an asyncio future of the running loop gets the result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cv:
            if self._stopped:
                raise RuntimeError("device lane is stopped (server is shutting down)")
            (self._high if priority else self._low).append((loop, fut, fn, args))
            self._cv.notify()
        return fut

    def _run(self, init) -> None:
        if init is not None:
            init()
        while True:
            with self._cv:
                while not self._high and not self._low and not self._stopped:
                    self._cv.wait()
                if self._stopped and not self._high and not self._low:
                    return
                loop, fut, fn, args = (self._high or self._low).popleft()
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the waiting coroutine
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # loop closed: nobody waits any more
                pass

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            pending = list(self._high) + list(self._low)
            self._high.clear()
            self._low.clear()
            self._cv.notify_all()
        for loop, fut, _, _ in pending:
            try:
                loop.call_soon_threadsafe(_settle, fut, None,
                                          RuntimeError("server is shutting down"))
            except RuntimeError:
                pass


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
