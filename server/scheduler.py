"""One scheduler loop per streamable model: batch every session with a frame ready into one step.

Sessions append samples; the loop gathers those holding >= 1 full frame, pads the batch to a
bucket (powers of two up to 16, then multiples of 16), and runs gather -> step -> scatter on
the model's single device thread (off the event loop). `flush()` (for `reset` / `end`) runs the trailing partial frame with its own length.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from concurrent.futures import Executor

import numpy as np

from server.backends.base import Backend
from server.errors import StreamError
from server.metrics import Metrics
from server.sessions import Close, Session
from server.slab import SlabFullError, StateSlab
from server.tasks import cancel_and_wait

log = logging.getLogger("s4d.scheduler")


def bucket(n: int, step: int = 16) -> int:
    """Padded batch size: a power of two up to `step`, then a multiple of `step`. Shapes repeat
    (caches stay warm) while padding wastes at most step - 1 rows: with pure powers of two, 34
    sessions ran as 64 and a server at its limit fell off a cliff (measured)."""
    if n <= step:
        return 1 << max(0, (n - 1).bit_length())
    return -(-n // step) * step


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class ModelScheduler:
    def __init__(
        self,
        name: str,
        backend: Backend,
        slab: StateSlab,
        executor: Executor,
        metrics: Metrics,
        *,
        max_buffer_samples: int,
    ):
        self.name = name
        self.backend = backend
        self.slab = slab
        self.executor = executor
        self.metrics = metrics
        meta = backend.metadata
        self.frame_size = meta.frame_size
        self.patch_size = meta.patch_size
        self.classes = meta.classes
        self.max_buffer_samples = max(max_buffer_samples, 2 * self.frame_size)
        self.sessions: dict[str, Session] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        metrics.slab_bytes_total.labels(model=name).set(slab.bytes_total)
        self._update_gauges()

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"scheduler-{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        await cancel_and_wait(self._task)
        self._task = None

    def notify(self) -> None:
        self._wake.set()

    async def device(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ---- sessions ----------------------------------------------------------------------
    async def open_session(self, *, channels: int, encoding: str, emit_every: int) -> Session:
        try:
            slot = self.slab.allocate()
        except SlabFullError as exc:
            raise StreamError("server_busy", f"model {self.name}: {exc}; try again later") from exc
        try:
            await self.device(self.slab.storage.zero, [slot])
        except BaseException:
            self.slab.free(slot)
            raise
        s = Session(
            self.name, slot, channels=channels, encoding=encoding, emit_every=emit_every,
            classes=self.classes, max_buffer_samples=self.max_buffer_samples,
        )
        self.sessions[s.id] = s
        self.metrics.sessions_opened.labels(model=self.name).inc()
        self._update_gauges()
        return s

    def close_session(self, s: Session, reason: str) -> None:
        """Delete the session and free its slot (idempotent). Steps in flight are harmless: a
        reused slot is zeroed on the device thread, after any step that still holds it."""
        if s.closed:
            return
        s.closed = True
        s.close_reason = reason
        self.sessions.pop(s.id, None)
        self.slab.free(s.slot)
        s.space.set()
        if s.flush_future is not None and not s.flush_future.done():
            s.flush_future.set_exception(StreamError("internal", f"session closed ({reason})"))
        m = self.metrics
        m.sessions_closed.labels(model=self.name, reason=reason).inc()
        if reason == "idle_timeout":
            m.sessions_evicted.labels(model=self.name).inc()
        self._update_gauges()
        dur = time.monotonic() - s.created
        mean_ms = s.step_seconds / s.steps * 1e3 if s.steps else 0.0
        log.info(
            "session_end model=%s session=%s reason=%s duration_s=%.3f samples=%d steps=%d "
            "mean_step_ms=%.3f", self.name, s.id, reason, dur, s.consumed, s.steps, mean_ms,
        )

    async def reset_state(self, s: Session) -> None:
        await self.device(self.slab.storage.zero, [s.slot])
        s.new_segment()

    async def flush(self, s: Session) -> None:
        """Run everything buffered (partial frame included); returns when done."""
        if s.flush_future is None or s.flush_future.done():
            s.flush_future = asyncio.get_running_loop().create_future()
        fut = s.flush_future
        self._wake.set()
        await fut

    def expire(self, now: float, ttl: float) -> int:
        n = 0
        for s in list(self.sessions.values()):
            if not s.attached and now - s.detached_at > ttl:
                self.close_session(s, "idle_timeout")
                n += 1
        return n

    def _update_gauges(self) -> None:
        m = self.metrics
        m.sessions_active.labels(model=self.name).set(len(self.sessions))
        m.slab_bytes_in_use.labels(model=self.name).set(self.slab.bytes_in_use)

    # ---- the loop ----------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the loop die
                log.exception("scheduler %s: unexpected error", self.name)

    async def _drain(self) -> None:
        t, patch = self.frame_size, self.patch_size
        while not self._stopping:
            ready = [s for s in self.sessions.values() if len(s.buffer) >= t]
            # flushes (reset / end) whose full frames are done: their partial frame runs in the
            # same round as the full frames of others, so busy streams never starve an `end`
            flushing = [
                s for s in self.sessions.values()
                if s.flush_future is not None and not s.flush_future.done() and len(s.buffer) < t
            ]
            self.metrics.queue_depth.labels(model=self.name).set(len(ready))
            if not ready and not flushing:
                return
            groups: dict[int, list[Session]] = defaultdict(list)
            for s in flushing:
                usable = len(s.buffer) - len(s.buffer) % patch
                if usable:
                    groups[usable].append(s)
            if ready:
                await self._step(ready, t)
            for usable, group in groups.items():
                await self._step(group, usable)
            now = time.monotonic()
            for s in flushing:
                rest = len(s.buffer)
                if 0 < rest < patch:  # less than one patch: ignored, as in the batch forward
                    _, anchor = s.take(rest)
                    s.advance(rest, None, anchor, now)
                if s.flush_future is not None and not s.flush_future.done():
                    s.flush_future.set_result(None)

    async def _step(self, group: list[Session], length: int) -> None:
        group = [s for s in group if not s.closed]
        if not group:
            return
        n = len(group)
        b = bucket(n)
        c = group[0].channels
        frames = np.zeros((b, length, c), np.float32)
        anchors = []
        for i, s in enumerate(group):
            rows, anchor = s.take(length)
            frames[i] = rows
            anchors.append(anchor)
        slots = [s.slot for s in group]
        storage, backend = self.slab.storage, self.backend

        def work():
            t0 = time.perf_counter()
            state = storage.gather(slots, pad_to=b)
            logits, new_state = backend.step(frames, state)
            storage.scatter(slots, new_state)
            return np.asarray(logits)[:n], time.perf_counter() - t0

        try:
            logits, dt = await self.device(work)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("scheduler %s: step failed for %d sessions", self.name, n)
            for s in group:
                err = StreamError("internal", f"model step failed: {type(exc).__name__}")
                self.metrics.error("internal")
                s.send(err.to_message())
                s.send(Close(err.close_code))
                self.close_session(s, "error")
            return
        if logits.ndim == 3:  # pooling none: per-step outputs; the prediction is the last step
            logits = logits[:, -1]
        probs = softmax(logits.astype(np.float64)).astype(np.float32)
        now = time.monotonic()
        m = self.metrics
        m.step_latency.labels(model=self.name).observe(dt)
        m.batch_size.labels(model=self.name).observe(n)
        m.frames_processed.labels(model=self.name).inc(n)
        m.samples_processed.labels(model=self.name).inc(n * length)
        for i, s in enumerate(group):
            s.steps += 1
            s.step_seconds += dt
            if not s.closed:
                s.advance(length, probs[i], anchors[i], now)
