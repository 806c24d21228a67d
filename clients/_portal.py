"""A private event loop in a daemon thread, so the sync client can drive the async one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class Portal:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="s4d-client-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a sync S4D client call from inside its own callback thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            aclose: Any = getattr(agen, "aclose", None)
            if aclose is not None and self._loop.is_running():
                try:
                    self.call(aclose(), timeout=5)
                except Exception:  # noqa: BLE001 - best effort
                    pass

    def close(self) -> None:
        if self._loop.is_running():
            # as asyncio.run ends: what is still pending (an async generator's aclose that
            # an error left to its finalizer, a session's receiver) is cancelled and awaited
            # here, not destroyed with the loop ("Task was destroyed but it is pending!")
            try:
                self.call(_drain(), timeout=5)
            except Exception:  # noqa: BLE001 - best effort
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()


async def _drain() -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)  # let callbacks already scheduled (asyncgen finalizers) run
    tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=4)
    await loop.shutdown_asyncgens()
