"""Streaming sessions: byte reassembly -> float32 samples, buffered until the scheduler steps."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np

from server.errors import StreamError

#: encoding -> (numpy dtype, bytes per value, scale)
ENCODINGS: dict[str, tuple[str, int, float]] = {
    "pcm_s16le": ("<i2", 2, 1.0 / 32768.0),
    "f32le": ("<f4", 4, 1.0),
}


@dataclass(frozen=True)
class Close:
    """Outbox sentinel: close the socket with ``code`` once everything before it is sent."""

    code: int = 1000
    reason: str = ""


class SampleBuffer:
    """FIFO of float32 rows [n, C] with cheap appends and exact takes."""

    def __init__(self, channels: int):
        self.channels = channels
        self._chunks: deque[np.ndarray] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, rows: np.ndarray) -> None:
        if len(rows):
            self._chunks.append(rows)
            self._len += len(rows)

    def take(self, n: int) -> np.ndarray:
        n = min(n, self._len)
        parts, need = [], n
        while need:
            head = self._chunks[0]
            if len(head) <= need:
                parts.append(self._chunks.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                self._chunks[0] = head[need:]
                need = 0
        self._len -= n
        if not parts:
            return np.zeros((0, self.channels), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, 0)

    def clear(self) -> None:
        self._chunks.clear()
        self._len = 0


class Session:
    """One stream's server-side life: outlives its connection for the idle TTL (resume)."""

    def __init__(
        self,
        model: str,
        slot: int,
        *,
        channels: int,
        encoding: str,
        emit_every: int,
        classes: tuple[str, ...],
        max_buffer_samples: int,
        session_id: str | None = None,
    ):
        self.id = session_id or uuid.uuid4().hex
        self.model = model
        self.slot = slot
        self.channels = channels
        self.classes = classes
        self.emit_every = emit_every
        self.max_buffer_samples = max_buffer_samples
        self.set_encoding(encoding)
        self.buffer = SampleBuffer(channels)
        self.pending = bytearray()  # bytes of an incomplete sample
        self.received = 0  # whole samples accepted (the offset a resume continues from)
        self.consumed = 0  # samples run through the model (or dropped at a flush)
        self.segment_consumed = 0  # since the last reset
        self.skip = 0  # duplicate samples still to drop after a resume
        self.last_probs: np.ndarray | None = None
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.space = asyncio.Event()
        self.space.set()
        self.flush_future: asyncio.Future | None = None
        self.attached = False
        self.created = time.monotonic()
        self.detached_at = self.created
        self.last_arrival = self.created
        self._arrivals: deque[tuple[int, float]] = deque()
        self.steps = 0
        self.step_seconds = 0.0
        self.closed = False
        self.close_reason: str | None = None
        self.done = asyncio.Event()  # set when the attached connection handler has finished

    def set_encoding(self, encoding: str) -> None:
        dtype, width, scale = ENCODINGS[encoding]
        self.encoding = encoding
        self._dtype = np.dtype(dtype)
        self._scale = np.float32(scale)
        self.sample_bytes = width * self.channels

    # ---- input -------------------------------------------------------------------------
    def feed(self, data: bytes, now: float | None = None) -> int:
        """Decode bytes (any split) into whole samples; returns the samples accepted."""
        now = time.monotonic() if now is None else now
        if self.pending:
            data = bytes(self.pending) + data
            self.pending.clear()
        whole = len(data) // self.sample_bytes * self.sample_bytes
        if whole < len(data):
            self.pending.extend(data[whole:])
        if not whole:
            return 0
        values = np.frombuffer(data, dtype=self._dtype, count=whole // self._dtype.itemsize)
        if self.encoding == "f32le":
            if not np.isfinite(values).all():
                raise StreamError("non_finite", "NaN or Inf in the f32le samples")
            rows = values.astype(np.float32).reshape(-1, self.channels)
        else:
            rows = (values.astype(np.float32) * self._scale).reshape(-1, self.channels)
        if self.skip:
            dropped = min(self.skip, len(rows))
            rows = rows[dropped:]
            self.skip -= dropped
        if len(rows):
            self.buffer.append(rows)
            self.received += len(rows)
            self._arrivals.append((self.received, now))
            self.last_arrival = now
            if len(self.buffer) >= self.max_buffer_samples:
                self.space.clear()
        return len(rows)

    def take(self, n: int) -> tuple[np.ndarray, float]:
        """The next ``n`` samples and the arrival time of the message holding the last one."""
        rows = self.buffer.take(n)
        end = self.consumed + len(rows)
        while self._arrivals and self._arrivals[0][0] < end:
            self._arrivals.popleft()
        anchor = self._arrivals[0][1] if self._arrivals else self.last_arrival
        if len(self.buffer) < self.max_buffer_samples:
            self.space.set()
        return rows, anchor

    def drop_partial_bytes(self) -> None:
        self.pending.clear()

    # ---- output ------------------------------------------------------------------------
    def result(self, kind: str = "result", latency_ms: float | None = None, **extra) -> dict:
        msg: dict = {"type": kind, "session_id": self.id, "offset": self.consumed}
        if self.last_probs is None:
            msg["label"] = None
            msg["probabilities"] = None
        else:
            p = self.last_probs
            msg["label"] = self.classes[int(np.argmax(p))]
            msg["probabilities"] = {c: float(v) for c, v in zip(self.classes, p, strict=True)}
        if latency_ms is not None:
            msg["latency_ms"] = round(float(latency_ms), 3)
        msg.update(extra)
        return msg

    def advance(self, n: int, probs: np.ndarray | None, anchor: float, now: float) -> None:
        """Record ``n`` consumed samples (with the model's new prediction) and maybe emit."""
        old = self.consumed
        self.consumed += n
        self.segment_consumed += n
        if probs is not None:
            self.last_probs = probs
        e = self.emit_every
        if e > 0 and probs is not None and self.consumed // e > old // e:
            self.outbox.put_nowait(self.result(latency_ms=(now - anchor) * 1e3))

    def new_segment(self) -> None:
        self.segment_consumed = 0
        self.last_probs = None

    def send(self, msg: dict | Close) -> None:
        self.outbox.put_nowait(msg)
