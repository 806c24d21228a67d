"""The front-end's view of an engine: models, stream handles, per-tick batching, RPCs.

Every attached WebSocket has a `StreamHandle`. Its decoded samples wait in a local queue and go
to the engine with the next tick, all sessions of this front-end in one message, within the
credit the engine granted (its per-session ring). Progress from the engine (consumed offset and
probabilities after every step) comes back one message per engine round; the handle turns it
into `result` messages at `emit_every` boundaries and releases backpressure.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from server.backends.base import ModelMetadata
from server.batcher import BatcherBusy
from server.engine.buffers import write_ring
from server.engine.wire import drop_arrays
from server.errors import StreamError

log = logging.getLogger("s4d.frontend")


class EngineUnavailable(RuntimeError):
    """The engine is not (yet, or no longer) reachable."""


class RemotePredictor:
    """`predict(list of [L, C] arrays) -> list of logits`, run by the engine's batcher."""

    def __init__(self, client: EngineClient, model: RemoteModel):
        self.client, self.model = client, model

    async def predict(self, sequences: list[np.ndarray], frames: bool = False) -> list[np.ndarray]:
        lengths = np.array([len(s) for s in sequences], np.int64)
        data = np.concatenate([np.asarray(s, np.float32) for s in sequences])
        op = {"op": "predict", "model": self.model.idx, "data": 0, "lengths": 1}
        if frames:  # the logits after every frame end (events of pooled models)
            op["frames"] = True
        reply = await self.client.request(op, [data, lengths])
        flat, out, at = reply["logits"], [], 0
        for shape in reply["shapes"]:
            n = int(np.prod(shape))
            out.append(np.asarray(flat[at:at + n]).reshape(shape))
            at += n
        return out


class RemoteModel:
    """What the REST routes and the stream handler see of a served model."""

    def __init__(self, client: EngineClient, info: dict):
        info = dict(info)
        self.idx = info.pop("idx")
        self.credit = info.pop("credit")
        ring = info.pop("ring", None)
        # where this front-end writes its sessions' samples: in another process, its own staging
        # ring of this model in shared memory (the engine copies out what a tick commits)
        self.ring = client.link.attach_ring(self.idx, ring) if ring else None
        self.ring_len = ring["ring"] if ring else 0
        info["classes"] = tuple(info["classes"])
        self.metadata = ModelMetadata(**info)
        self.name = self.metadata.name
        self.batcher = RemotePredictor(client, self)

    @property
    def streamable(self) -> bool:
        return self.metadata.streamable


class StreamHandle:
    """One attached session on this front-end: offsets, local queue, credit, arrivals."""

    def __init__(self, client: EngineClient, model: RemoteModel, info: dict, *,
                 max_buffer_samples: int, emit_every: int,
                 on_result: Callable[[str, dict], None], on_closed: Callable[[str, str], None]):
        self.client, self.model = client, model
        self.session_id: str = info["session_id"]
        self.slot, self.gen = info["slot"], info["gen"]
        self.key = (model.idx, self.slot, self.gen)
        self.received = self.sent = info["received"]  # absolute sample offsets
        self.consumed = info["consumed"]
        self.credit = min(info["credit"], model.credit)
        self.limit = min(max_buffer_samples, self.credit)
        self.emit_every = emit_every
        self.on_result, self.on_closed = on_result, on_closed
        self.local: deque[np.ndarray] = deque()
        self.local_len = 0
        self.arrivals: deque[tuple[int, float]] = deque()
        self.last_probs: np.ndarray | None = None
        self.space = asyncio.Event()
        self.space.set()
        self.all_sent = asyncio.Event()
        self.all_sent.set()
        self.closed = False
        self.detaching = False
        #: model.events.EventDetector or None: sees every frame's probabilities; its events
        #: go out as on_result("event", {...}) after that frame's result
        self.detector = None

    def push(self, rows: np.ndarray, now: float) -> None:
        if not len(rows) or self.closed:
            return
        self.local.append(rows)
        self.local_len += len(rows)
        self.received += len(rows)
        self.arrivals.append((self.received, now))
        self.all_sent.clear()
        if self.received - self.consumed >= self.limit:
            self.space.clear()  # backpressure: the reader stops until the engine catches up
        self.client.mark(self)

    def take_sendable(self) -> np.ndarray | None:
        """Rows that fit the credit now (the rest waits for progress)."""
        room = self.credit - (self.sent - self.consumed)
        n = min(room, self.local_len)
        if n <= 0:
            return None
        parts, need = [], n
        while need:
            head = self.local[0]
            if len(head) <= need:
                parts.append(self.local.popleft())
                need -= len(head)
            else:
                parts.append(head[:need])
                self.local[0] = head[need:]
                need = 0
        self.local_len -= n
        self.sent += n
        if not self.local_len:
            self.all_sent.set()
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def progress(self, consumed: int, probs: np.ndarray, now: float) -> None:
        old, self.consumed = self.consumed, consumed
        self.last_probs = probs
        e = self.emit_every
        if e > 0 and consumed // e > old // e:
            self.on_result("result", {"offset": consumed, "probs": probs,
                                      "latency_ms": (now - self.anchor(consumed)) * 1e3})
        if self.detector is not None:
            for ev in self.detector.update(consumed, probs):
                self.on_result("event", ev)
        if self.received - self.consumed < self.limit:
            self.space.set()
        if self.local_len:
            self.client.mark(self)

    def anchor(self, end: int) -> float:
        """Arrival time of the message that held sample `end - 1`."""
        arr = self.arrivals
        while arr and arr[0][0] < end:
            arr.popleft()
        return arr[0][1] if arr else time.monotonic()

    def stored(self, offset: int) -> None:
        """The engine stored a snapshot of this session up to `offset` (received samples)."""
        if not self.closed:
            self.on_result("stored", {"offset": offset})

    def fail(self, code: str, message: str) -> None:
        if not self.closed:
            self.closed = True
            self.space.set()
            self.all_sent.set()
            self.on_closed(code, message)


class EngineClient:
    def __init__(self, link, *, max_buffer_samples: int, tick_interval_s: float = 0.0,
                 heartbeat_s: float = 0.5, engine_timeout_s: float = 3.0):
        self.link = link
        self.max_buffer_samples = max_buffer_samples
        self.tick_interval_s = tick_interval_s
        self.heartbeat_s, self.engine_timeout_s = heartbeat_s, engine_timeout_s
        self.models: dict[str, RemoteModel] = {}
        self.by_idx: list[RemoteModel] = []
        self.handles: dict[tuple[int, int, int], StreamHandle] = {}
        self.ready = False
        self.load_error: str | None = None
        self.failed: dict[str, str] = {}  # checkpoints that did not load: name -> why
        self.store: dict | None = None  # engine 0's session store check (StoreHealth.state)
        self.epoch: int | None = None
        self._futures: dict[int, asyncio.Future] = {}
        self._req = itertools.count(1)
        self._dirty: dict[StreamHandle, None] = {}
        self._ops: list[dict] = []
        self._op_arrays: list[np.ndarray] = []
        self._scheduled = False
        self._last_tick = 0.0
        self._last_heard = time.monotonic()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.link.start(self.on_message)
        self._tasks.append(loop.create_task(self._watch(), name="engine-watch"))

    async def stop(self) -> None:
        self._stopping = True
        try:
            self._ops.append({"op": "bye"})
            # answered after the bye: it arrived (a process that exits right after, e.g. on
            # uvicorn's re-raised signal, loses what its socket has not sent yet, and the
            # engine then waits out frontend_timeout_s before it detaches or stops)
            seen = self.request({"op": "ping"}, stale_ok=True)
            self._send_tick()
            await asyncio.wait_for(seen, 0.5)
        except Exception:  # the engine may be gone already
            pass
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.link.close()

    async def _watch(self) -> None:
        """hello until the engine is ready, then heartbeats; a silent engine is declared lost.

        Ends on `stop()` by its flag, not only by cancellation: on Python 3.11 a cancel that
        lands as a `hello` reply completes is swallowed by asyncio.wait_for, and the loop
        went on forever (a server stopped while loading, e.g. its port taken, never exited)."""
        while not self._stopping:
            now = time.monotonic()
            if self.link.remote and now - self._last_heard > self.engine_timeout_s:
                if self.ready or self.epoch is not None:
                    log.error("engine silent for %.1fs: marking it lost", now - self._last_heard)
                    self._engine_lost("the engine stopped answering")
            try:
                kind = "ping" if self.ready else "hello"
                reply = await asyncio.wait_for(self.request({"op": kind}, stale_ok=True),
                                               self.engine_timeout_s)
                self._on_hello(reply)
            except (asyncio.TimeoutError, EngineUnavailable):
                pass
            except Exception:  # keep watching whatever happens
                log.exception("engine watch")
            await asyncio.sleep(self.heartbeat_s if self.ready else 0.05)

    def _on_hello(self, reply: dict) -> None:
        self.load_error = reply.get("load_error")
        self.failed = dict(reply.get("failed") or {})
        self.store = reply.get("store")
        epoch = reply.get("epoch")
        if self.epoch is not None and epoch != self.epoch:
            log.error("engine restarted (epoch %s -> %s): its sessions are gone", self.epoch, epoch)
            self._engine_lost("the engine restarted; session state lost")
        self.epoch = epoch
        if reply.get("models") is not None:
            self.by_idx = [RemoteModel(self, m) for m in reply["models"]]
            self.models = {m.name: m for m in self.by_idx}
            self.ready = bool(reply.get("ready"))

    def _engine_lost(self, message: str) -> None:
        self.ready = False
        self.store = None
        self.epoch = None
        for h in list(self.handles.values()):
            h.fail("internal", message)
        self.handles.clear()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(EngineUnavailable(message))
        self._futures.clear()

    # ---- sending -------------------------------------------------------------------------
    def mark(self, h: StreamHandle) -> None:
        self._dirty[h] = None
        self._schedule()

    def _schedule(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        loop = asyncio.get_running_loop()
        wait = self._last_tick + self.tick_interval_s - time.monotonic()
        if wait > 0:
            loop.call_later(wait, self._send_tick)
        else:
            loop.call_soon(self._send_tick)

    def _send_tick(self) -> None:
        """One message to the engine: every session's sendable samples, then queued ops."""
        self._scheduled = False
        self._last_tick = time.monotonic()
        arrays: list[np.ndarray] = list(self._op_arrays)
        per_model: dict[int, tuple[list, list, list, list]] = {}
        dirty, self._dirty = self._dirty, {}
        for h in dirty:
            if h.closed:
                continue
            start = h.sent
            rows = h.take_sendable()
            if rows is None:
                continue
            m = h.model
            write_ring(m.ring, m.ring_len, h.slot, start, rows)  # the tick carries only counts
            s, g, c = per_model.setdefault(m.idx, ([], [], []))
            s.append(h.slot)
            g.append(h.gen)
            c.append(len(rows))
        feed = []  # the message carries only who has how many new samples
        for model, (s, g, c) in per_model.items():
            base = len(arrays)
            arrays += [np.array(s, np.int32), np.array(g, np.int32), np.array(c, np.int32)]
            feed.append([model, base, base + 1, base + 2])
        ops, self._ops, self._op_arrays = self._ops, [], []
        if not feed and not ops:
            return
        self.link.send({"ep": self.epoch, "feed": feed, "ops": ops}, arrays)

    def request(self, op: dict, arrays: list[np.ndarray] | None = None, *,
                stale_ok: bool = False) -> asyncio.Future:
        """Queue an op for the next tick; the future gets the engine's reply (or an error)."""
        if not stale_ok and not self.ready:
            raise EngineUnavailable("the engine is not ready")
        req = next(self._req)
        fut = asyncio.get_running_loop().create_future()
        self._futures[req] = fut
        op = dict(op, req=req)
        if arrays:  # op fields that name arrays are indices into this op's list: rebase them
            base = len(self._op_arrays)
            for k in ("data", "lengths"):
                if k in op:
                    op[k] += base
            self._op_arrays += arrays
        self._ops.append(op)
        self._schedule()
        return fut

    def post(self, op: dict) -> None:
        """Fire-and-forget op (detach, close)."""
        self._ops.append(op)
        self._schedule()

    # ---- receiving -----------------------------------------------------------------------
    def on_message(self, header: dict, arrays: list[np.ndarray]) -> None:
        self._last_heard = now = time.monotonic()
        ep = header.get("ep")
        if self.epoch is not None and ep is not None and ep != self.epoch:
            self._engine_lost("the engine restarted; session state lost")
        handles = self.handles
        for model, si, gi, ci, pi in header.get("prog", ()):
            slots, gens, consumed, probs = arrays[si], arrays[gi], arrays[ci], arrays[pi]
            for i, (slot, gen, c) in enumerate(zip(slots.tolist(), gens.tolist(),
                                                   consumed.tolist(), strict=True)):
                h = handles.get((model, slot, gen))
                if h is not None:
                    h.progress(c, probs[i], now)
        for msg in header.get("ctl", ()):
            fut = self._futures.pop(msg.get("req"), None)
            if fut is None or fut.done():
                if "opened" in msg:
                    self._unclaimed(msg)
                continue
            msg = drop_arrays(msg, arrays)
            if "error" in msg:
                fut.set_exception(_error(msg))
            else:
                fut.set_result(msg)
        for ev in header.get("evt", ()):
            if ev.get("ev") == "stored":
                h = handles.get((ev["model"], ev["slot"], ev["gen"]))
                if h is not None:
                    h.stored(ev["offset"])
                continue
            h = handles.pop((ev["model"], ev["slot"], ev["gen"]), None)
            if h is not None:
                h.fail(ev["code"], ev["message"])  # closed: this front-end writes no more
            self.post({"op": "released", "model": ev["model"], "slot": ev["slot"],
                       "gen": ev["gen"]})

    def _unclaimed(self, msg: dict) -> None:
        """An `open` answered after its caller gave up (a cancelled request: a gRPC deadline or
        a client gone; or the engine was declared lost meanwhile). Nobody holds the session:
        left attached to this front-end it stayed busy for ever. A new one is closed (the
        caller never got it), a resumed one detached (resumable again)."""
        if "error" in msg:
            return
        op = {"op": "detach" if msg.get("resumed") else "close", "model": msg["opened"],
              "slot": msg["slot"], "gen": msg["gen"]}
        if op["op"] == "close":
            op["reason"] = "error"
        self.post(op)

    # ---- sessions ------------------------------------------------------------------------
    async def open(self, model: RemoteModel, *, session_id: str | None, offset: int | None,
                   encoding: str, emit_every: int, on_result, on_closed,
                   key: str | None = None, key_max: int | None = None,
                   create_id: str | None = None) -> StreamHandle:
        fut = self.request({"op": "open", "model": model.idx, "session_id": session_id,
                            "offset": offset, "encoding": encoding, "emit_every": emit_every,
                            "key": key, "key_max": key_max, "create_id": create_id})
        try:
            info = await fut
        except asyncio.CancelledError:  # cancelled after the answer came: nobody will hold it
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._unclaimed(fut.result())
            raise
        h = StreamHandle(self, model, info, max_buffer_samples=self.max_buffer_samples,
                         emit_every=emit_every, on_result=on_result, on_closed=on_closed)
        self.handles[h.key] = h
        return h

    async def flush(self, h: StreamHandle, *, reset: bool = False, end: bool = False) -> dict:
        """Everything sent so far (trailing partial frame included) runs; returns consumed and
        probabilities (before a reset). When the queued samples fit the session's credit they
        all go out with the next tick, and the flush op rides in that same message (the engine
        commits a message's samples before its ops): one tick instead of two."""
        while h.local_len > h.credit - (h.sent - h.consumed) and not h.closed:
            await h.all_sent.wait()
        if h.closed:
            raise StreamError("internal", "the session was closed")
        reply = await self.request({"op": "flush", "model": h.model.idx, "slot": h.slot,
                                    "gen": h.gen, "reset": reset, "end": end})
        h.consumed = max(h.consumed, reply["consumed"])
        if end:
            self.handles.pop(h.key, None)
        return reply

    def forget(self, h: StreamHandle) -> None:
        """The session ended on the engine (`end` answered): stop routing its progress."""
        self.handles.pop(h.key, None)

    def detach(self, h: StreamHandle) -> None:
        """The connection is gone: deliver every sample it sent (all were accepted), then
        detach so that the session can be resumed (with its full offset) for the idle TTL."""
        if h.key not in self.handles or h.detaching:
            return
        h.detaching = True
        h.on_result = _ignore
        if not h.local_len:
            self._post_detach(h)
            return
        self._tasks.append(asyncio.get_running_loop().create_task(self._detach_later(h)))

    async def _detach_later(self, h: StreamHandle) -> None:
        try:
            await asyncio.wait_for(h.all_sent.wait(), self.engine_timeout_s * 10)
        except asyncio.TimeoutError:
            log.warning("detach: %d samples of a session never fit its credit", h.local_len)
        finally:
            self._post_detach(h)
            self._tasks = [t for t in self._tasks if not t.done()]

    def _post_detach(self, h: StreamHandle) -> None:
        h.closed = True
        if self.handles.pop(h.key, None) is not None:
            self.post({"op": "detach", "model": h.model.idx, "slot": h.slot, "gen": h.gen})

    def close(self, h: StreamHandle, reason: str) -> None:
        if self.handles.pop(h.key, None) is not None:
            self.post({"op": "close", "model": h.model.idx, "slot": h.slot, "gen": h.gen,
                       "reason": reason})

    # ---- moving sessions (server/engine/sessions_ops.py) ---------------------------------
    async def park(self, h: StreamHandle) -> int:
        """Drain one stream: every sample sent reaches the engine, which stores the session in
        the session store and closes it here. Returns the stored offset (StreamError if the
        store could not take it: the caller falls back to `final`)."""
        while h.local_len and not h.closed:
            await h.all_sent.wait()
        if h.closed:
            raise StreamError("internal", "the session was closed")
        reply = await self.request({"op": "park", "model": h.model.idx, "slot": h.slot,
                                    "gen": h.gen})
        h.closed = True
        self.handles.pop(h.key, None)
        return int(reply["received"])

    async def snapshot(self, session_id: str) -> bytes:
        """Snapshot bytes of a live session (or the stored one)."""
        reply = await self.request({"op": "snapshot", "session_id": session_id})
        return np.asarray(reply["data"], np.uint8).tobytes()

    async def restore(self, data: bytes, session_id: str | None = None) -> dict:
        """Install snapshot bytes on the engine as a detached, resumable session."""
        return await self.request({"op": "restore", "session_id": session_id, "data": 0},
                                  [np.frombuffer(data, np.uint8)])


def _ignore(*_args) -> None:
    pass


def _error(msg: dict) -> Exception:
    code, message = msg["error"], msg.get("message", "")
    if code == "server_busy" and "pending" in message:
        return BatcherBusy(message)
    if code == "shutting_down":
        return RuntimeError("server is shutting down")
    return StreamError(code, message)


def key_engine(key: str, engines: int) -> int:
    """The engine that holds every session of an API key with a session quota: each engine
    counts the sessions it holds, so a key's sessions spread over several engines had its
    `max_sessions` on each. The same on every front-end (a stable hash, not Python's)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % max(1, engines)


def frontend_identity(index: int) -> bytes:
    return f"fe{index}-{os.getpid()}".encode()


class EnginePool:
    """Every engine of the server (one per device), seen as one: new sessions go to the engine
    with the fewest sessions from this front-end (those of an API key with a session quota to
    that key's engine), a resume to the engine named in the session id (`e<index>-...`), batch
    requests round-robin."""

    def __init__(self, clients: list[EngineClient]):
        self.clients = clients
        self._rr = itertools.count()

    @property
    def ready(self) -> bool:
        return all(c.ready for c in self.clients)

    @property
    def models(self) -> dict[str, RemoteModel]:
        models = self.clients[0].models
        if len(self.clients) > 1:
            for m in models.values():
                if not isinstance(m.batcher, PooledPredictor):
                    m.batcher = PooledPredictor(self, m.name)
        return models

    @property
    def load_error(self) -> str | None:
        return next((c.load_error for c in self.clients if c.load_error), None)

    @property
    def failed(self) -> dict[str, str]:
        return self.clients[0].failed

    @property
    def store(self) -> dict | None:
        """The session store's health as engine 0 checks it (None: no store)."""
        return self.clients[0].store

    async def start(self) -> None:
        for c in self.clients:
            await c.start()

    async def stop(self) -> None:
        for c in self.clients:
            await c.stop()

    def _for_session(self, session_id: str) -> EngineClient:
        head = session_id.split("-", 1)[0]
        if head[:1] == "e" and head[1:].isdigit() and int(head[1:]) < len(self.clients):
            return self.clients[int(head[1:])]
        return self.clients[0]

    def model_on(self, client: EngineClient, model: RemoteModel) -> RemoteModel:
        return client.models.get(model.name, model)

    async def snapshot(self, session_id: str) -> bytes:
        return await self._for_session(session_id).snapshot(session_id)

    async def restore(self, data: bytes, session_id: str) -> dict:
        return await self._for_session(session_id).restore(data, session_id)

    async def open(self, model: RemoteModel, *, session_id: str | None, **kw) -> StreamHandle:
        named = session_id or kw.get("create_id")  # a chosen new id names its engine too
        if named is not None:
            client = self._for_session(named)
        elif kw.get("key") is not None and kw.get("key_max") is not None:
            client = self.clients[key_engine(kw["key"], len(self.clients))]
        else:
            client = min(self.clients, key=lambda c: len(c.handles))
        return await client.open(self.model_on(client, model), session_id=session_id, **kw)



class PooledPredictor:
    """Batch requests round-robin over the engines (each runs its own batcher)."""

    def __init__(self, pool: EnginePool, name: str):
        self.pool, self.name = pool, name

    async def predict(self, sequences: list[np.ndarray], frames: bool = False) -> list[np.ndarray]:
        clients = self.pool.clients
        client = clients[next(self.pool._rr) % len(clients)]
        return await client.models[self.name].batcher.predict(sequences, frames=frames)
