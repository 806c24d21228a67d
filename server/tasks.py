"""Background asyncio loops (one scheduler and one predict batcher per model) and their stop."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a loop task and wait for it to unwind; errors it raised on the way are moot."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
