"""The device lane: one thread per model that runs device work, stream steps first.

Stream steps (20 ms of audio for every live session) and batch `/predict` forwards share one
device thread, so the state slab is touched in submission order. Two queues instead of one FIFO:
the thread always takes a waiting stream step before the next batch job, so a long batch
request delays streams by at most one batch job, never by a queue of them. While the stream loop
still has frames to step it `hold`s batch jobs back for a moment (its next step is submitted
a few hundred microseconds after the last one finished; without the hold a waiting batch chunk
would slip in between every two steps: measured, a real-time stream got one frame per chunk).
A batch job never waits longer than `max_hold_s` in all, so streams cannot starve batch work.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any


class DeviceLane:
    def __init__(self, name: str, init: Callable[[], Any] | None = None,
                 max_hold_s: float = 0.25):
        self._high: deque = deque()
        self._low: deque = deque()
        self._hold_until = 0.0
        self._grace = 0.0
        self._low_since = 0.0  # when the oldest waiting batch job was queued
        self.max_hold_s = max_hold_s
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
            if not priority and not self._low:
                self._low_since = time.monotonic()
            (self._high if priority else self._low).append((loop, fut, fn, args))
            self._cv.notify()
        return fut

    def hold(self, grace_s: float = 0.003) -> None:
        """The stream loop has more to step: after each stream step, keep batch jobs back for
        `grace_s` so that its next step (submitted right after) goes first."""
        with self._cv:
            self._grace = grace_s

    def release(self) -> None:
        with self._cv:
            self._grace = 0.0
            self._hold_until = 0.0
            self._cv.notify()

    def _next(self):
        """The next job, or None to wait: stream steps first; batch jobs unless held back."""
        if self._high:
            return self._high.popleft(), True
        if self._low:
            now = time.monotonic()
            if now < self._hold_until and now - self._low_since < self.max_hold_s:
                return None
            job = self._low.popleft()
            self._low_since = now
            return job, False
        return None

    def _run(self, init) -> None:
        if init is not None:
            init()
        while True:
            with self._cv:
                while True:
                    if self._stopped and not self._high and not self._low:
                        return
                    nxt = self._next()
                    if nxt is not None:
                        job, high = nxt
                        break
                    wait = None
                    if self._low:  # held: look again when the hold or the fairness bound ends
                        now = time.monotonic()
                        wait = max(1e-4, min(self._hold_until - now,
                                             self._low_since + self.max_hold_s - now))
                    self._cv.wait(wait)
                loop, fut, fn, args = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the waiting coroutine
                result, error = None, exc
            if high and self._grace:
                with self._cv:
                    self._hold_until = time.monotonic() + self._grace
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # loop closed: nobody waits any more
                pass

    def stop(self, join_timeout_s: float = 10.0) -> None:
        """Refuse new work, fail what is queued, and wait (bounded) for the job in hand: a
        process that exits while this thread is inside torch aborts ("terminate called without
        an active exception", exit status 134) instead of exiting cleanly."""
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
        if threading.current_thread() is not self._thread:
            self._thread.join(join_timeout_s)


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
