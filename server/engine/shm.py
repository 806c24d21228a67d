"""The staging rings' shared memory: created by an engine, one per front-end and model, each
attached (and written) by its front-end only; the engine copies committed samples out of it.

The engine and its front-ends are children of one supervisor and share its multiprocessing
resource tracker, which knows a segment by name only: a front-end that attached and then
unregistered (so that its exit would not unlink the engine's ring) removed the engine's own
registration too, and the engine's unlink then crashed the tracker with KeyError at every
shutdown, while a killed engine's rings stayed in /dev/shm. So the tracker never holds a ring:
the engine unlinks its rings when it stops (`remove`), and the supervisor removes those of an
engine that died (`remove_engine_segments`).

Front-ends map a ring from /dev/shm without SharedMemory, and `remove` unlinks it there: before
Python 3.13 attaching registers the name (and unregistering it again was the fix above), and
the tracker keeps a set of names, not a count, so two front-ends attaching at once (register,
register, unregister, unregister) still made it raise KeyError (seen at 8 workers on a GPU
host). Where there is no /dev/shm, SharedMemory as before.
"""

from __future__ import annotations

import mmap
import os
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np


def prefix(pid: int) -> str:
    return f"s4d-{pid}-"


def _untrack(seg: shared_memory.SharedMemory) -> None:
    try:  # creating or attaching registered it (Python < 3.13 cannot say track=False)
        resource_tracker.unregister(seg._name, "shared_memory")
    except Exception:  # noqa: BLE001 - no tracker in this process
        pass


def create(name: str, shape: tuple[int, ...]) -> tuple[shared_memory.SharedMemory, np.ndarray]:
    """A float32 array of `shape` in a new segment `name` (untracked). A new segment reads as
    zeros and is not written here, so it takes memory only where it is written."""
    seg = shared_memory.SharedMemory(create=True, size=max(int(np.prod(shape)) * 4, 1),
                                     name=name)
    _untrack(seg)
    return seg, np.ndarray(shape, np.float32, buffer=seg.buf)


SHM_DIR = Path("/dev/shm")  # POSIX shared memory segments, on Linux


def attach(name: str, shape: tuple[int, ...]):
    """Another process's segment as a float32 array, never told to the resource tracker (its
    owner unlinks it): (the mapping to keep alive, the array)."""
    if not SHM_DIR.is_dir():
        seg = shared_memory.SharedMemory(name=name, create=False)
        _untrack(seg)
        return seg, np.ndarray(shape, np.float32, buffer=seg.buf)
    fd = os.open(SHM_DIR / name, os.O_RDWR)
    try:
        mapping = mmap.mmap(fd, 0)
    finally:
        os.close(fd)
    return mapping, np.ndarray(shape, np.float32, buffer=mapping)


def remove(name: str) -> None:
    if SHM_DIR.is_dir():
        try:
            os.unlink(SHM_DIR / name)
        except FileNotFoundError:
            pass
        return
    try:
        seg = shared_memory.SharedMemory(name=name, create=False)
    except FileNotFoundError:
        return
    seg.close()
    try:
        seg.unlink()  # its unregister matches the register of the attach above
    except FileNotFoundError:
        pass


def remove_engine_segments(pid: int) -> int:
    """Unlink the rings a dead engine left in /dev/shm; returns how many."""
    shm_dir = Path("/dev/shm")
    if not shm_dir.is_dir():
        return 0
    names = [p.name for p in shm_dir.glob(prefix(pid) + "*")]
    for name in names:
        remove(name)
    return len(names)
