"""Start-up objects out of the cyclic garbage collector's view (engine and front-end processes)."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, models, torch's and numpy's own) out of the cyclic
    collector's view. Steady streaming leaves nothing behind for it (no collection in 8 s of
    600 sessions, `bench.engine_load`), but sessions opening and closing do, and each full
    collection of an engine process then walked ~190,000 start-up objects: 30-38 ms with the
    whole process stopped (2-core machine), a pause every stream would feel."""
    gc.collect()
    gc.freeze()
