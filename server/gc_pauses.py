"""The cyclic garbage collector's pauses: fewer (start-up objects frozen out of its view) and
seen (a histogram per process role). A collection stops the whole process, so every stream
the process serves waits for it."""

from __future__ import annotations

import gc
import time
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


def watch_pauses(observe: Callable[[int, float], None]) -> Callable[[], None]:
    """Call `observe(generation, seconds)` after every collection of this process; returns
    the function that stops watching."""
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            observe(info["generation"], time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    return lambda: gc.callbacks.remove(on_gc) if on_gc in gc.callbacks else None
