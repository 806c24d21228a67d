"""On-disk .npz cache so that training runs do not regenerate identical data."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cached(
    task: str,
    split: str,
    n: int,
    seed: int,
    make: Callable[[], tuple[np.ndarray, np.ndarray]],
    cache_dir: str | os.PathLike = ".cache/data",
    version: str = "1",
) -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y) from cache or build them with `make` and store them.

    The key includes a generator version so a changed generator never serves stale data.
    Writes go to a temporary file first so concurrent readers never see a partial file.
    """
    key = hashlib.sha1(f"{task}|{split}|{n}|{seed}|{version}".encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"{task}_{split}_{n}_{seed}_{key}.npz"
    if path.exists():
        with np.load(path) as data:
            return data["x"], data["y"]
    x, y = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, path)
    return x, y
