"""One served model inside the engine: sessions, sample buffers, the stream loop, the batch path.

The session manager part (open / resume / flush / detach / close / expire) is the only code
that changes a session; the loop asks the planner what to run, reads frames from the buffers,
runs gather -> step -> scatter on the model's device lane and reports progress to the owning
front-ends through the engine's outbox.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from server import snapshot as snapshots
from server.batcher import PredictBatcher
from server.engine.buffers import SlotBuffers, ring_shape
from server.engine.lane import DeviceLane
from server.engine.planner import bucket, plan_round, split_batch
from server.errors import StreamError
from server.metrics import Metrics
from server.probs import softmax
from server.slab import SlabFullError, StateSlab

log = logging.getLogger("s4d.engine")


def short_id(session_id: str) -> str:
    """What logs show of a session id (the id is the resume credential)."""
    import hashlib

    return hashlib.sha256(session_id.encode()).hexdigest()[:10]


@dataclass
class EngineSession:
    id: str
    slot: int
    gen: int
    encoding: str
    emit_every: int
    owner: int = -1  # front-end index while attached, -1 when detached (mirrored in buffers)
    key: str | None = None  # the API key that opened it (None: no keys configured)
    detached_at: float = 0.0
    created: float = field(default_factory=time.monotonic)

    @property
    def attached(self) -> bool:
        return self.owner >= 0


class SlotIndex(dict):
    """slot -> session, with the array of live slots the planner reads every round rebuilt only
    when sessions come or go (20k ECG sessions: a dict walk per round costs more than the round)."""

    _array: np.ndarray | None = None

    def __setitem__(self, key, value) -> None:
        self._array = None
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self._array = None
        super().__delitem__(key)

    def pop(self, key, *default):
        self._array = None
        return super().pop(key, *default)

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.fromiter(self, np.int64, len(self))
        return self._array


@dataclass
class Flush:
    owner: int
    req: int
    reset: bool
    end: bool


class ModelEngine:
    def __init__(self, idx: int, name: str, backend, storage, lane: DeviceLane, metrics: Metrics,
                 outbox, *, batch_settings: dict, id_prefix: str = "e0-",
                 round_interval_s: float = 0.0):
        meta = backend.metadata
        self.idx, self.name, self.backend, self.metadata = idx, name, backend, meta
        self.frame, self.patch = meta.frame_size, meta.patch_size
        self.lane, self.metrics, self.outbox = lane, metrics, outbox
        self.id_prefix = id_prefix
        self.round_interval = round_interval_s
        self.slab = StateSlab(storage) if storage is not None else None
        self.streamable = storage is not None
        if self.streamable:
            # enough unconsumed samples in flight to keep the device busy (8 frames or half a
            # second); the front-end holds the rest of a session's `max_buffer_samples`
            ring = max(8 * self.frame, meta.sample_rate // 2)
            ring = -(-ring // self.frame) * self.frame
            shape = ring_shape(storage.capacity, ring, self.frame, meta.input_channels)
            self.buffers = SlotBuffers(storage.capacity, ring, meta.input_channels,
                                       len(meta.classes), frame=self.frame)
            self.ring_info = {"ring": ring, "shape": list(shape)}  # for front-ends' staging
        self.quarantine: dict[int, list[tuple[int, int]]] = {}  # owner -> failed (slot, gen)
        # open sessions per API key, shared by every model of the engine (set by the engine)
        self.key_sessions: collections.Counter = collections.Counter()
        self.sessions: dict[str, EngineSession] = {}
        self.by_slot: SlotIndex = SlotIndex()
        self.flushes: dict[int, list[Flush]] = {}
        self.batcher = PredictBatcher(
            backend, lambda fn, *a: lane.submit(fn, *a, priority=False), **batch_settings)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        # resumable sessions: set by the engine (persistence: None = no session store)
        self.persistence = None
        self.model_hash = ""  # sha256 of the checkpoint (snapshot identity)
        if self.streamable:
            metrics.slab_bytes_total.labels(model=name).set(self.slab.bytes_total)
        self._gauges()

    @property
    def credit(self) -> int:
        """Unconsumed samples a front-end may have in flight per session."""
        return self.buffers.ring if self.streamable else 0

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.batcher.start()
        if self.streamable:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"engine-{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.batcher.stop()

    # ---- session manager -----------------------------------------------------------------
    async def open(self, owner: int, *, session_id: str | None, offset: int | None,
                   encoding: str, emit_every: int, key: str | None = None,
                   key_max: int | None = None, create_id: str | None = None) -> dict:
        """New session, or resume of a detached one. Returns the `started` facts. `key`: the
        API key that opens it (a session belongs to it); `key_max`: that key's session quota.
        `create_id`: the id of the new session, chosen by the caller (OIP sequences derive it
        from key, model and sequence id so that every front-end finds it); refused while live."""
        if not self.streamable:
            raise StreamError("not_streamable", f"model {self.name!r} is bidirectional: batch only")
        if create_id is not None and create_id in self.sessions:
            raise StreamError("session_exists", "a session with that id is live")
        if session_id is None:
            if key is not None and key_max is not None and self.key_sessions[key] >= key_max:
                raise StreamError("quota_exceeded",
                                  f"this API key holds its {key_max} sessions; end one first")
            try:
                slot = self.slab.allocate()
            except SlabFullError as exc:
                raise StreamError("server_busy", f"model {self.name}: {exc}; try again later") from exc
            try:
                await self.lane.submit(self.slab.storage.zero, [slot])
            except BaseException:
                self.slab.free(slot)
                raise
            if create_id is not None and create_id in self.sessions:  # opened meanwhile
                self.slab.free(slot)
                raise StreamError("session_exists", "a session with that id is live")
            gen = self.buffers.open(slot)
            s = EngineSession(create_id or self.id_prefix + uuid.uuid4().hex, slot, gen, encoding,
                              emit_every, key=key)
            if key is not None:
                self.key_sessions[key] += 1
            self._set_owner(s, owner)
            self.sessions[s.id] = s
            self.by_slot[slot] = s
            self.metrics.sessions_opened.labels(model=self.name).inc()
            self._gauges()
            resumed = False
            if self.persistence is not None:
                self.persistence.opened(self, s)
        else:
            s = self.sessions.get(session_id)
            if s is not None and not snapshots.owner_allows(s.key, key):  # before any lease
                raise StreamError("session_forbidden", "that session belongs to another API key")
            if self.persistence is not None and (s is None or not s.attached):
                # not here (or maybe stale here): restore the latest snapshot from the store
                info = await self.persistence.resume(self, owner, session_id, offset=offset,
                                                     encoding=encoding, emit_every=emit_every,
                                                     key=key)
                if info is not None:
                    return info
                s = self.sessions.get(session_id)
            if s is None:
                raise StreamError("unknown_session",
                                  f"no session {session_id!r} (never existed or expired)")
            if not snapshots.owner_allows(s.key, key):
                raise StreamError("session_forbidden", "that session belongs to another API key")
            if s.attached:
                raise StreamError("session_busy", "that session is attached to another connection")
            held = int(self.buffers.received[s.slot])
            if offset is not None and offset > held:
                raise StreamError("offset_gap", f"offset {offset} > {held} samples held")
            s.encoding, s.emit_every = encoding, emit_every
            self._set_owner(s, owner)
            resumed = True
        b = self.buffers
        log.info("session_start model=%s session=%s resumed=%s offset=%d encoding=%s",
                 self.name, short_id(s.id), resumed, int(b.received[s.slot]), encoding)
        return {"session_id": s.id, "slot": s.slot, "gen": s.gen,
                "received": int(b.received[s.slot]), "consumed": int(b.consumed[s.slot]),
                "credit": self.credit, "resumed": resumed}

    def _set_owner(self, s: EngineSession, owner: int) -> None:
        s.owner = owner
        self.buffers.owner[s.slot] = owner

    def session_at(self, slot: int, gen: int) -> EngineSession | None:
        s = self.by_slot.get(slot)
        return s if s is not None and s.gen == gen else None

    def feed(self, slots: np.ndarray, gens: np.ndarray, counts: np.ndarray,
             owner: int | None = None, source: np.ndarray | None = None) -> None:
        """A tick's samples, written by the front-end `owner` at their slots and offsets into
        `source` (its own staging ring; None: straight into this model's ring, in the same
        process): commit them. Entries of sessions that are gone, or attached to another
        front-end, are skipped (nobody can receive their results) and their samples never
        reach the ring the engine reads."""
        if not self.streamable or not len(slots):
            return
        b = self.buffers
        slots = slots.astype(np.int64)
        counts = counts.astype(np.int64)
        ok = b.valid(slots, gens)
        if owner is not None:  # a front-end that has not yet heard its session was detached
            ok &= b.owner[slots] == owner
        if not ok.all():
            slots, counts = slots[ok], counts[ok]
        over = b.available(slots) + counts > b.ring
        if over.any():  # more than its credit: a bug, answered for those sessions only
            for slot in slots[over]:
                self._fail(self.by_slot[int(slot)], "internal", "sample buffer overflow")
            slots, counts = slots[~over], counts[~over]
        if source is not None:
            b.copy_in(source, slots, counts)
        b.commit(slots, counts)
        self._wake.set()

    def release(self, owner: int, slot: int, gen: int) -> None:
        """The owner of a session that failed has seen the failure: it writes no more into
        the slot's ring, so the slot can serve another session."""
        held = self.quarantine.get(owner, [])
        if (slot, gen) in held:
            held.remove((slot, gen))
            self.slab.free(slot)
            self._gauges()  # the slot's bytes were still counted in use

    def release_owner(self, owner: int) -> None:
        """A front-end is gone: nothing it held can be written any more."""
        held = self.quarantine.pop(owner, [])
        for slot, _ in held:
            self.slab.free(slot)
        if held:
            self._gauges()

    def flush(self, owner: int, req: int, slot: int, gen: int, *, reset: bool, end: bool) -> None:
        """Run everything buffered (the trailing partial frame too), then answer `req`."""
        s = self.session_at(slot, gen)
        if s is None or s.owner != owner:
            self.outbox.reply(owner, {"req": req, "error": "unknown_session",
                                      "message": "the session is closed"})
            return
        self.flushes.setdefault(slot, []).append(Flush(owner, req, reset, end))
        self._wake.set()

    def detach(self, slot: int, gen: int, owner: int | None = None) -> None:
        """`owner`: the front-end asking; only the one the session is attached to may (one
        whose sessions were detached while it was silent may not yet know)."""
        s = self.session_at(slot, gen)
        if s is not None and s.attached and owner in (None, s.owner):
            self._set_owner(s, -1)
            s.detached_at = time.monotonic()
            if self.persistence is not None:
                self.persistence.detached(self, s)
            log.info("session_detach model=%s session=%s offset=%d", self.name, short_id(s.id),
                     int(self.buffers.received[slot]))

    def detach_owner(self, owner: int, tell: str | None = None) -> int:
        """A front-end is gone: its sessions stay resumable for the idle TTL. `tell`: it may
        still be alive (it was only silent), so each session is also reported closed to it
        with this message: a front-end that still held one would stream on into a detached
        session whose results go nowhere."""
        if not self.streamable:
            return 0
        slots = self.by_slot.array()  # the owner column: no walk over every session
        mine = slots[self.buffers.owner[slots] == owner].tolist()
        for slot in mine:
            s = self.by_slot[slot]
            if tell is not None:
                self.outbox.event(owner, {"ev": "closed", "model": self.idx, "slot": s.slot,
                                          "gen": s.gen, "code": "internal", "message": tell})
            self.detach(s.slot, s.gen)
        return len(mine)

    def close(self, slot: int, gen: int, reason: str, owner: int | None = None) -> None:
        s = self.session_at(slot, gen)
        if s is not None and owner in (None, s.owner):
            self._close(s, reason)

    def _close(self, s: EngineSession, reason: str, quarantine: bool = False) -> None:
        """Delete the session and free its slot. A step in flight is harmless: a reused slot is
        zeroed on the device lane after it, and its results are dropped by generation. A slot
        whose front-end may still be writing into its ring (the engine ended the session on
        its own) is quarantined until that front-end has released it."""
        if self.sessions.pop(s.id, None) is None:
            return
        if self.persistence is not None:
            self.persistence.closed(self, s, reason)
        self.by_slot.pop(s.slot, None)
        if s.key is not None:  # the key's quota counts open sessions, not sessions ever opened
            self.key_sessions[s.key] -= 1
            if self.key_sessions[s.key] <= 0:
                del self.key_sessions[s.key]
        self.buffers.close(s.slot)
        if quarantine and s.attached:
            self.quarantine.setdefault(s.owner, []).append((s.slot, s.gen))
        else:
            self.slab.free(s.slot)
        for f in self.flushes.pop(s.slot, []):
            self.outbox.reply(f.owner, {"req": f.req, "error": "internal",
                                        "message": f"session closed ({reason})"})
        m = self.metrics
        m.sessions_closed.labels(model=self.name, reason=reason).inc()
        if reason == "idle_timeout":
            m.sessions_evicted.labels(model=self.name).inc()
        self._gauges()
        steps, secs = int(self.buffers.steps[s.slot]), float(self.buffers.step_seconds[s.slot])
        log.info("session_end model=%s session=%s reason=%s duration_s=%.3f steps=%d "
                 "mean_step_ms=%.3f", self.name, short_id(s.id), reason,
                 time.monotonic() - s.created, steps, secs / steps * 1e3 if steps else 0.0)

    def _fail(self, s: EngineSession, code: str, message: str) -> None:
        if s.attached:
            self.outbox.event(s.owner, {"ev": "closed", "model": self.idx, "slot": s.slot,
                                        "gen": s.gen, "code": code, "message": message})
        self._close(s, "error", quarantine=True)

    def expire(self, now: float, ttl: float) -> int:
        """Close sessions detached for longer than `ttl`. Only detached slots are visited (the
        owner column of the buffers says which): the reaper runs every second, and a walk over
        20,000 attached sessions held the engine's loop for milliseconds each time."""
        if not self.streamable:  # batch-only: no sessions, no buffers
            return 0
        slots = self.by_slot.array()
        n = 0
        for slot in slots[self.buffers.owner[slots] < 0].tolist():
            s = self.by_slot[slot]
            if now - s.detached_at > ttl:
                self._close(s, "idle_timeout")
                n += 1
        return n

    def close_all(self, reason: str) -> None:
        for s in list(self.sessions.values()):
            self._close(s, reason)

    def _gauges(self) -> None:
        m = self.metrics
        m.sessions_active.labels(model=self.name).set(len(self.sessions))
        if self.streamable:
            m.slab_bytes_in_use.labels(model=self.name).set(self.slab.bytes_in_use)

    # ---- the stream loop -----------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        while not self._stopping:
            await self._wake.wait()
            # rounds at most every `round_interval`: frames that arrive meanwhile join the
            # batch, so the fixed cost of a step (kernel launches, dispatch) is paid per batch
            wait = last + self.round_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            last = loop.time()
            try:
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the loop die, and never leave a stream waiting
                log.exception("engine %s: unexpected error in the stream loop", self.name)
                self._fail_waiting(f"stream loop failed: {type(exc).__name__}")

    def _fail_waiting(self, message: str) -> None:
        """After an unexpected error mid-round, fail every session that round owed a step or a
        flush: its state rows and counters may disagree now, and a session left as it is would
        wait for results that never come (the same error would likely recur each round).
        Sessions with nothing pending are untouched."""
        self.lane.release()
        slots = self.by_slot.array()
        if not len(slots):
            return
        owed = self.buffers.available(slots) >= self.frame
        owed |= np.isin(slots, np.fromiter(self.flushes, np.int64, len(self.flushes)))
        for slot in slots[owed].tolist():
            s = self.by_slot.get(slot)
            if s is not None:  # closing it also answers its flushes with an error
                self.metrics.error("internal")
                self._fail(s, "internal", message)

    async def _drain(self) -> None:
        """Rounds back to back while any session has a full frame: a busy device batches by
        itself (frames that arrive during a step join the next), and a session behind by k
        frames steps in k rounds together with whoever else is ready (measured: stepping
        backlogs in separate passes split the batches and fell behind on 2 CPU cores)."""
        while not self._stopping:
            if not await self._round():
                self.lane.release()
                return

    async def _round(self) -> bool:
        """Step every session with a full frame once (and finish flushes); False if none."""
        b = self.buffers
        slots = self.by_slot.array()
        avail = b.available(slots)
        flushing = np.fromiter(self.flushes, np.int64, len(self.flushes))
        rnd = plan_round(slots, avail, flushing, frame=self.frame, patch=self.patch)
        self.metrics.queue_depth.labels(model=self.name).set(len(rnd.full))
        if rnd.empty:
            return False
        self.lane.hold()  # our next step follows right after this one
        for part in split_batch(rnd.full, self.backend.max_step_batch):
            await self._step(part, self.frame)
        for length, group in rnd.partial.items():
            await self._step(group, length)
        await self._finish_flushes(rnd.finished)
        return True

    async def _finish_flushes(self, slots: np.ndarray) -> None:
        b = self.buffers
        for slot in slots.tolist():
            s = self.by_slot.get(slot)
            waiting = self.flushes.pop(slot, [])
            if s is None:
                continue
            reset = any(f.reset for f in waiting)
            end = any(f.end for f in waiting)
            rest = int(b.available(np.array([slot]))[0])
            if 0 < rest < self.patch and (reset or end):
                # less than one patch: ignored, as in the batch forward. A plain flush (an OIP
                # sequence request) keeps it buffered: it belongs to the next patch
                b.advance(np.array([slot]), rest)
            probs = b.probs[slot].tolist() if b.has_probs[slot] else None
            consumed = int(b.consumed[slot])
            if reset and not end:
                await self.lane.submit(self.slab.storage.zero, [slot])
                b.segment[slot] = 0
                b.has_probs[slot] = False
            for f in waiting:
                self.outbox.reply(f.owner, {"req": f.req, "consumed": consumed, "probs": probs})
            if end:
                self._close(s, "end")

    async def _step(self, slots: np.ndarray, length: int) -> None:
        b = self.buffers
        gens = b.gen[slots].copy()
        n = len(slots)
        frames = b.read(slots, length)
        storage, backend, slot_list = self.slab.storage, self.backend, slots.tolist()
        pad = bucket(n) - n if backend.pads_batches else 0
        if pad:
            frames = np.concatenate([frames, np.zeros((pad, *frames.shape[1:]), np.float32)])

        def work():
            t0 = time.perf_counter()
            logits = backend.step_slots(storage, slot_list, frames)
            if logits.ndim == 3:  # pooling none: the prediction is the last step
                logits = logits[:, -1]
            return softmax(logits.astype(np.float64)).astype(np.float32), time.perf_counter() - t0

        try:
            probs, dt = await self.lane.submit(work)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("engine %s: step failed for %d sessions", self.name, n)
            for slot, gen in zip(slot_list, gens.tolist(), strict=True):
                s = self.session_at(slot, gen)
                if s is not None:
                    self.metrics.error("internal")
                    self._fail(s, "internal", f"model step failed: {type(exc).__name__}")
            return
        live = b.gen[slots] == gens  # sessions closed (and slots reused) meanwhile drop out
        if not live.all():
            slots, gens, probs = slots[live], gens[live], probs[live]
        b.advance(slots, length)
        b.probs[slots] = probs
        b.has_probs[slots] = True
        m = self.metrics
        m.step_latency.labels(model=self.name).observe(dt)
        m.batch_size.labels(model=self.name).observe(n)
        m.frames_processed.labels(model=self.name).inc(n)
        m.samples_processed.labels(model=self.name).inc(n * length)
        b.steps[slots] += 1
        b.step_seconds[slots] += dt
        self.outbox.progress(self.idx, b.owner[slots], slots, gens, b.consumed[slots], probs)

    # ---- snapshots (server/snapshot.py; scheduling and the store: persistence.py) ---------
    async def snapshot_many(self, sessions: list[EngineSession]
                            ) -> list[tuple[EngineSession, snapshots.Snapshot]]:
        """Snapshots of live sessions, taken between two steps of each.

        The state rows are read by one job on the device lane, so every step submitted before
        it is in them and none submitted after; this coroutine resumes after the loop has
        applied those steps' counters (a step's results are applied as soon as its lane future
        settles, and that future settles before this one), so offsets and buffered samples read
        here match the rows. Sessions closed meanwhile (slot reused) are left out.
        """
        if not self.streamable or not sessions:
            return []
        storage, slots = self.slab.storage, [s.slot for s in sessions]

        def capture():  # copies: a storage may hand out views of reused buffers
            return {k: np.array(snapshots.to_numpy(v), copy=True)
                    for k, v in storage.gather(slots).items()}

        rows = await self.lane.submit(capture)
        b, out = self.buffers, []
        wall, mono = time.time(), time.monotonic()
        for i, s in enumerate(sessions):
            if self.session_at(s.slot, s.gen) is not s:
                continue
            slot = s.slot
            out.append((s, snapshots.Snapshot(
                model=self.name, model_hash=self.model_hash, session_id=s.id,
                state={k: np.ascontiguousarray(v[i]) for k, v in rows.items()},
                received=int(b.received[slot]), consumed=int(b.consumed[slot]),
                segment_consumed=int(b.segment[slot]), buffered=b.buffered(slot),
                channels=self.metadata.input_channels, emit_every=int(s.emit_every),
                encoding=s.encoding, owner_key=s.key or "",
                last_probs=b.probs[slot].copy() if b.has_probs[slot] else None,
                created_unix=wall - (mono - s.created), taken_unix=wall)))
        return out

    async def snapshot(self, session: EngineSession) -> bytes:
        """One live session as snapshot bytes (StreamError unknown_session if it closed)."""
        taken = await self.snapshot_many([session])
        if not taken:
            raise StreamError("unknown_session", "the session closed while being snapshotted")
        return snapshots.encode(taken[0][1])

    def decode_snapshot(self, data: bytes) -> snapshots.Snapshot:
        """Bytes -> Snapshot of this model's weights, or StreamError with the snapshot code."""
        try:
            return snapshots.decode(data, expect_model=self.name, expect_hash=self.model_hash)
        except snapshots.SnapshotError as exc:
            raise StreamError(exc.code, exc.message) from exc

    async def restore(self, data: bytes, owner: int = -1, *, encoding: str | None = None,
                      emit_every: int | None = None) -> dict:
        """Install a snapshot (bytes) here as a session; returns the `started` facts."""
        return await self.restore_snapshot(self.decode_snapshot(data), owner, encoding=encoding,
                                           emit_every=emit_every)

    async def restore_snapshot(self, snap: snapshots.Snapshot, owner: int = -1, *,
                               encoding: str | None = None, emit_every: int | None = None) -> dict:
        """A slot with the snapshot's state, counters and buffered samples; attached to `owner`
        (or detached for the idle TTL when owner is -1)."""
        if not self.streamable:
            raise StreamError("not_streamable", f"model {self.name!r} is bidirectional: batch only")
        if snap.session_id in self.sessions:
            raise StreamError("session_busy", "that session is already live on this server")
        if len(snap.buffered) > self.buffers.ring or snap.channels != self.metadata.input_channels:
            raise StreamError("snapshot_state_mismatch",
                              f"{len(snap.buffered)} buffered samples of {snap.channels} "
                              f"channel(s) do not fit this model's buffer")
        try:
            slot = self.slab.allocate()
        except SlabFullError as exc:
            raise StreamError("server_busy", f"model {self.name}: {exc}; try again later") from exc
        try:
            await self.lane.submit(snapshots.restore_state, self.slab.storage, slot, snap.state)
        except snapshots.SnapshotError as exc:
            self.slab.free(slot)
            raise StreamError(exc.code, exc.message) from exc
        except BaseException:
            self.slab.free(slot)
            raise
        if snap.session_id in self.sessions:  # restored twice concurrently: keep the first
            self.slab.free(slot)
            raise StreamError("session_busy", "that session is already live on this server")
        b = self.buffers
        gen = b.open(slot, received=snap.consumed, consumed=snap.consumed)
        b.segment[slot] = snap.segment_consumed
        if snap.last_probs is not None and len(snap.last_probs) == b.probs.shape[1]:
            b.probs[slot] = snap.last_probs
            b.has_probs[slot] = True
        if len(snap.buffered):
            b.write(np.array([slot]), np.array([len(snap.buffered)]), snap.buffered)
        s = EngineSession(snap.session_id, slot, gen, encoding or snap.encoding,
                          snap.emit_every if emit_every is None else emit_every,
                          key=snap.owner_key or None)
        if s.key is not None:
            self.key_sessions[s.key] += 1
        s.created = time.monotonic() - max(0.0, time.time() - snap.created_unix)
        s.detached_at = time.monotonic()
        self._set_owner(s, owner)
        self.sessions[s.id] = s
        self.by_slot[slot] = s
        self.metrics.sessions_opened.labels(model=self.name).inc()
        self.metrics.sessions_restored.labels(model=self.name).inc()
        self._gauges()
        self._wake.set()
        log.info("session_restore model=%s session=%s offset=%d consumed=%d owner=%d",
                 self.name, short_id(s.id), int(b.received[slot]), int(b.consumed[slot]), owner)
        return {"session_id": s.id, "slot": s.slot, "gen": s.gen,
                "received": int(b.received[slot]), "consumed": int(b.consumed[slot]),
                "credit": self.credit, "resumed": True}
