"""The engine's sample rings in shared memory (server/engine/shm.py): front-ends attach them
without the resource tracker that every process of a server shares, the engine's `remove`
unlinks them, and the data is shared both ways."""

from __future__ import annotations

import os
from multiprocessing import resource_tracker

import pytest

from server.engine import shm


@pytest.fixture
def tracker_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(resource_tracker, "register", lambda *a: calls.append(("register", a)))
    monkeypatch.setattr(resource_tracker, "unregister",
                        lambda *a: calls.append(("unregister", a)))
    return calls


def test_attach_says_nothing_to_the_resource_tracker(tracker_calls):
    """The tracker keeps a set of names: front-ends that each registered and unregistered a
    ring they attached at the same moment made it raise KeyError (8 workers on a GPU host)."""
    name = f"{shm.prefix(os.getpid())}test-attach"
    seg, data = shm.create(name, (4, 3))
    try:
        tracker_calls.clear()  # creating registers and unregisters once, in the owner alone
        views = [shm.attach(name, (4, 3)) for _ in range(3)]
        assert tracker_calls == []
        data[1, 2] = 7.5
        assert all(v[1][1, 2] == 7.5 for v in views)
        views[0][1][0, 0] = -1.0
        assert data[0, 0] == -1.0
    finally:
        seg.close()
        shm.remove(name)
    assert not os.path.exists(f"/dev/shm/{name}")
    assert tracker_calls == []
    shm.remove(name)  # already gone: nothing to do


def test_remove_engine_segments_unlinks_a_dead_engines_rings():
    pid = 999_999_999  # no such process; its rings are named like an engine's
    segs = [shm.create(f"{shm.prefix(pid)}{i}", (8,))[0] for i in range(2)]
    for seg in segs:
        seg.close()
    assert shm.remove_engine_segments(pid) == 2
    assert shm.remove_engine_segments(pid) == 0
