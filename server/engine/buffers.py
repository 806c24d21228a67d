"""Per-model sample buffers and counters for every slot, as flat arrays.

A ring of `ring` samples per slot holds what a session has received and the model has not yet
consumed. Writes and frame reads for all sessions of a tick are single vectorised numpy ops,
so the engine's Python work per tick does not grow with the number of sessions.
Front-ends never send more than `ring` unconsumed samples per session (credit flow control);
a write beyond that is refused, never wrapped over unread samples.
"""

from __future__ import annotations

import numpy as np


class RingOverflow(RuntimeError):
    """A front-end sent more than its credit: a bug, answered as `internal` for that session."""


class SlotBuffers:
    def __init__(self, capacity: int, ring: int, channels: int, classes: int):
        self.capacity, self.ring, self.channels = capacity, ring, channels
        self.data = np.zeros((capacity * ring, channels), np.float32)
        self.received = np.zeros(capacity, np.int64)  # absolute sample offsets per session
        self.consumed = np.zeros(capacity, np.int64)
        self.segment = np.zeros(capacity, np.int64)  # consumed since the last reset
        self.probs = np.zeros((capacity, classes), np.float32)  # after the last step
        self.has_probs = np.zeros(capacity, bool)
        self.gen = np.zeros(capacity, np.int32)  # bumped when a slot is reused
        self.active = np.zeros(capacity, bool)
        self.owner = np.full(capacity, -1, np.int32)  # attached front-end, -1 when detached
        self.steps = np.zeros(capacity, np.int64)
        self.step_seconds = np.zeros(capacity, np.float64)

    @property
    def ring_bytes(self) -> int:
        return self.data.nbytes

    def open(self, slot: int, received: int = 0, consumed: int = 0) -> int:
        """Claim a slot for a session; returns its generation (stale messages carry another)."""
        self.gen[slot] += 1
        self.active[slot] = True
        self.received[slot] = received
        self.consumed[slot] = consumed
        self.segment[slot] = 0
        self.has_probs[slot] = False
        self.owner[slot] = -1
        self.steps[slot] = 0
        self.step_seconds[slot] = 0.0
        return int(self.gen[slot])

    def close(self, slot: int) -> None:
        self.active[slot] = False
        self.owner[slot] = -1
        self.gen[slot] += 1

    def valid(self, slots: np.ndarray, gens: np.ndarray) -> np.ndarray:
        return self.active[slots] & (self.gen[slots] == gens)

    def available(self, slots: np.ndarray) -> np.ndarray:
        return self.received[slots] - self.consumed[slots]

    def _index(self, slots: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Flat ring rows of `counts[i]` samples of slot `slots[i]` from offset `starts[i]`."""
        total = int(counts.sum())
        first = np.repeat(np.cumsum(counts) - counts, counts)
        pos = np.repeat(starts, counts) + (np.arange(total) - first)
        return np.repeat(slots * self.ring, counts) + pos % self.ring

    def write(self, slots: np.ndarray, counts: np.ndarray, data: np.ndarray) -> None:
        """Append `counts[i]` rows of `data` (concatenated in order) to each slot (slots unique:
        a front-end sends one entry per session and tick)."""
        slots = np.asarray(slots, np.int64)
        counts = np.asarray(counts, np.int64)
        if np.any(self.available(slots) + counts > self.ring):
            raise RingOverflow("a session sent more samples than its buffer credit")
        self.data[self._index(slots, self.received[slots], counts)] = data
        self.received[slots] += counts

    def read(self, slots: np.ndarray, length: int) -> np.ndarray:
        """The next `length` samples of each slot as [n, length, C]; advances `consumed`."""
        slots = np.asarray(slots, np.int64)
        counts = np.full(len(slots), length, np.int64)
        rows = self.data[self._index(slots, self.consumed[slots], counts)]
        return rows.reshape(len(slots), length, self.channels)

    def advance(self, slots: np.ndarray, n) -> None:
        self.consumed[slots] += n
        self.segment[slots] += n

    def buffered(self, slot: int) -> np.ndarray:
        """The unconsumed samples of one slot, [n, C] (for snapshots)."""
        n = int(self.received[slot] - self.consumed[slot])
        idx = self._index(np.array([slot]), self.consumed[[slot]], np.array([n]))
        return self.data[idx].copy()
