"""Resumable sessions, engine side: snapshots to the session store, leases, restore anywhere.

With `--session-store` set, every session of this engine has a lease in the store (owner =
this engine, fencing token) and a snapshot there that is never older than about
`snapshot_interval_s`:

* taken on detach (then the lease is released: the next replica to see the client may take it
  at once), every `snapshot_interval_s` for attached sessions (one `put_many` wave that also
  renews their leases; each stored offset is told to the client as a `stored` message, so it
  may forget samples before it), on drain (`park`: snapshot, release, close with 1001 and
  `resume: true`) and on engine stop;
* restored when a `start` names a session this engine does not hold (or holds a stale copy
  of): read the snapshot, take the lease, re-read (the last owner may have stored a newer one
  just before letting go), check the offset, install it in a slot;
* deleted with the lease on `end` (and on an error close; with the store down, by a later
  wave while the stored snapshot is still ours); left to expire with the idle TTL
  otherwise (every put sets the snapshot's TTL to `idle_ttl_s`).

Taking a lease held by another owner: wait up to `lease_wait_s` for it to be released (an
owner that is detaching or draining writes its last snapshot, then releases), then steal it.
A client that reconnects elsewhere is the best evidence that the old owner lost it (crashed,
or cut off from that client); should the old owner still be alive, its next write is refused
by the fencing token and it closes its copy (`session_moved`), so one session never advances
on two replicas in the store.

Store down (`StoreUnavailable`): streams go on locally; the failure is counted in
`s4d_snapshot_failures_total{reason="store_unavailable"}` and logged; the next wave after
the store is back stores every session again (a lease lost meanwhile is taken back unless
another owner has written the session since).
All store I/O of one engine runs under one lock, so the jobs of one session (detach, wave,
end) reach the store in the order they were made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from server import snapshot as snapshots
from server.errors import StreamError
from server.session_store import (
    LeaseHeldError,
    SessionStore,
    StaleLeaseError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from server.engine.model_engine import EngineSession, ModelEngine

log = logging.getLogger("s4d.persistence")


def short_id(session_id: str) -> str:
    import hashlib

    return hashlib.sha256(session_id.encode()).hexdigest()[:10]


def owner_name(index: int, epoch: int) -> str:
    """Who holds a lease: host, process, engine index and epoch (a restarted engine is a new
    owner, so it never mistakes a lease of its previous life for its own)."""
    return f"{socket.gethostname()}:{os.getpid()}:e{index}:{epoch}"


class Persistence:
    def __init__(self, store: SessionStore, *, owner: str, settings, metrics, models: list):
        self.store, self.owner, self.metrics = store, owner, metrics
        self.models: list[ModelEngine] = models  # the engine's list (filled while loading)
        self.interval = float(settings.snapshot_interval_s)
        self.idle_ttl = float(settings.idle_ttl_s)
        # a lease outlives a few missed waves; a crashed owner's sessions are stolen sooner
        # (a resume waits at most lease_wait_s)
        self.lease_ttl = max(3 * self.interval, 2.0)
        self.lease_wait = float(settings.lease_wait_s)
        self.stop_timeout = max(1.0, float(settings.graceful_timeout_s))
        self.tokens = _Tokens(self)  # session id -> our fencing token (lease held)
        self.stored: dict[str, float] = {}  # session id -> taken_unix of our latest stored one
        #: session id -> taken_unix of a later put that failed for a hung store: Redis may still
        #: apply it when it wakes, so that snapshot may be ours too
        self.attempted: dict[str, float] = {}
        self.granted: dict[str, int] = {}  # session id -> the last token granted to us
        self._io = asyncio.Lock()
        self._restoring: dict[str, asyncio.Lock] = {}
        self._jobs: set[asyncio.Task] = set()
        self._wave_task: asyncio.Task | None = None
        self._stopped = False
        self._down_since: float | None = None
        self._last_warning = 0.0
        #: ended while the store was down: session id -> (taken_unix of ours, retry until)
        self._unforgotten: dict[str, tuple[set[float], float]] = {}

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._wave_task = asyncio.get_running_loop().create_task(self._waves(), name="snapshots")
        log.info("session store %s: snapshots every %.1fs, lease %.1fs, owner %s",
                 getattr(self.store, "url", "?"), self.interval, self.lease_ttl, self.owner)

    async def stop(self) -> None:
        """Drain: finish pending jobs, store every session not yet stored, release leases."""
        if self._wave_task is not None:
            self._wave_task.cancel()
            await asyncio.gather(self._wave_task, return_exceptions=True)
        try:
            await asyncio.wait_for(self._drain_all(), self.stop_timeout)
        except asyncio.TimeoutError:
            log.warning("snapshots on stop did not finish within %.1fs", self.stop_timeout)
        except Exception:
            log.exception("snapshots on stop failed")
        self._stopped = True
        await self.store.close()

    async def _drain_all(self) -> None:
        if self._jobs:
            await asyncio.gather(*list(self._jobs), return_exceptions=True)
        async with self._io:
            for me in self.models:
                if not me.streamable:
                    continue
                todo = [s for s in me.sessions.values()
                        if s.attached or s.id in self.tokens or s.id not in self.stored]
                if todo:
                    await self._store_wave(me, todo, kind="drain", release=True)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    # ---- failures ------------------------------------------------------------------------
    def _unavailable(self, exc: Exception, n: int = 1) -> None:
        self.metrics.snapshot_failures.labels(reason="store_unavailable").inc(n)
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if now - self._last_warning > 10.0:
            self._last_warning = now
            log.warning("session store unavailable: %d snapshot(s) not stored, streams go on "
                        "locally (%s)", n, exc)

    def _reachable(self) -> None:
        if self._down_since is not None:
            log.warning("session store reachable again after %.1fs: snapshots resume",
                        time.monotonic() - self._down_since)
            self._down_since = None
            self._last_warning = 0.0

    def _moved(self, me: ModelEngine, s: EngineSession, why: str) -> None:
        """Another owner has the session now: close our copy without touching the store."""
        self.tokens.pop(s.id, None)
        self.granted.pop(s.id, None)
        self.stored.pop(s.id, None)
        self.attempted.pop(s.id, None)
        if me.session_at(s.slot, s.gen) is not s:
            return
        log.warning("session %s moved to another owner (%s): closing the copy here",
                    short_id(s.id), why)
        if s.attached:
            me.outbox.event(s.owner, {"ev": "closed", "model": me.idx, "slot": s.slot,
                                      "gen": s.gen, "code": "session_moved",
                                      "message": "the session continues on another replica"})
        me._close(s, "moved")

    # ---- hooks from the session manager --------------------------------------------------
    def opened(self, me: ModelEngine, s: EngineSession) -> None:
        self._spawn(self._acquire_new(s.id))

    async def _acquire_new(self, sid: str) -> None:
        async with self._io:
            if sid not in self.tokens:
                await self._acquire_new_locked(sid)

    async def _acquire_new_locked(self, sid: str) -> None:
        try:
            token = await self.store.acquire(sid, self.owner, self.lease_ttl)
        except StoreUnavailable as exc:
            self._unavailable(exc)  # the next wave tries again
            return
        except LeaseHeldError as exc:  # a fresh random id: cannot happen unless ids collide
            log.error("new session %s already leased by %s", short_id(sid), exc.owner)
            return
        self._reachable()
        self.tokens[sid] = token

    def detached(self, me: ModelEngine, s: EngineSession) -> None:
        self._spawn(self._on_detach(me, s))

    async def _on_detach(self, me: ModelEngine, s: EngineSession) -> None:
        async with self._io:
            if me.session_at(s.slot, s.gen) is not s or s.attached:
                return  # closed or attached again meanwhile
            await self._store_wave(me, [s], kind="detach", release=True)

    def closed(self, me: ModelEngine, s: EngineSession, reason: str) -> None:
        if self._stopped or reason == "moved":
            return
        token = self.tokens.pop(s.id, None)
        ours = {t for t in (self.stored.pop(s.id, None), self.attempted.pop(s.id, None))
                if t is not None}
        self.granted.pop(s.id, None)
        if reason in ("end", "error"):
            self._spawn(self._forget(s.id, token, ours))
        elif token is not None:  # idle_timeout, shutdown: the snapshot expires by itself
            self._spawn(self._release(s.id, token))

    async def _forget(self, sid: str, token: int | None, ours: set[float] | None = None) -> None:
        """The session ended: drop its snapshot and lease (a resume must not bring it back).
        With the store down, the next waves retry while its stored snapshot is still ours
        (`ours`: the taken_unix of our last stored one, and of a later put a hung store may
        still apply)."""
        async with self._io:
            token = self.tokens.pop(sid, token)
            try:
                if token is None:
                    token = await self.store.acquire(sid, self.owner, self.lease_ttl)
                await self.store.delete(sid, token)
            except (StaleLeaseError, LeaseHeldError):
                pass  # someone else has it now: theirs to end
            except StoreUnavailable as exc:
                self._unavailable(exc)
                if ours:
                    self._unforgotten[sid] = (ours, time.monotonic() + self.idle_ttl)

    async def _retry_forgets(self) -> None:
        """Delete the snapshots of sessions that ended while the store was down, unless
        another owner has stored the session since. Caller holds `_io`; StoreUnavailable
        leaves the rest for the next wave."""
        for sid, (ours, until) in list(self._unforgotten.items()):
            if time.monotonic() < until and await self._stored_is(sid, ours):
                try:
                    token = await self.store.acquire(sid, self.owner, self.lease_ttl)
                except LeaseHeldError:
                    token = None  # another owner holds it: theirs
                if token is not None:
                    if await self._stored_is(sid, ours):
                        await self.store.delete(sid, token)
                    else:
                        await self.store.release(sid, self.owner, token)
            del self._unforgotten[sid]

    async def _stored_is(self, sid: str, ours: set[float]) -> bool:
        """Is the stored snapshot of `sid` one taken at a time in `ours` (one of ours)?"""
        data = await self.store.get(sid)
        try:
            return data is not None and float(snapshots.read_metadata(data)["taken_unix"]) in ours
        except (snapshots.SnapshotError, KeyError, ValueError):
            return False

    async def _release(self, sid: str, token: int) -> None:
        async with self._io:
            try:
                await self.store.release(sid, self.owner, token)
            except StoreUnavailable as exc:
                self._unavailable(exc)

    # ---- storing -------------------------------------------------------------------------
    async def _store_wave(self, me: ModelEngine, sessions: list[EngineSession], *, kind: str,
                          release: bool = False, notify: bool = False) -> int:
        """Snapshot `sessions`, store them under our leases (acquired where missing); with
        `release` give the leases up afterwards. Caller holds `_io`. Returns how many stored;
        raises nothing (failures are counted and logged)."""
        t0 = time.perf_counter()
        try:
            taken = await me.snapshot_many(sessions)
        except Exception:
            log.exception("snapshot capture failed")
            self.metrics.snapshot_failures.labels(reason="error").inc(len(sessions))
            return 0
        if not taken:
            return 0
        try:
            for s, _ in taken:
                if s.id not in self.tokens:
                    await self._reclaim(me, s)
            taken = [(s, snap) for s, snap in taken
                     if s.id in self.tokens and me.session_at(s.slot, s.gen) is s]
            if len(taken) > 16:
                blobs = await asyncio.to_thread(lambda: [snapshots.encode(sn) for _, sn in taken])
            else:
                blobs = [snapshots.encode(sn) for _, sn in taken]
            items = [(s.id, blob, self.tokens[s.id]) for (s, _), blob in zip(taken, blobs)]
            results = await self.store.put_many(items, self.idle_ttl, lease_ttl_s=self.lease_ttl)
        except StoreUnavailable as exc:
            self._unavailable(exc, len(taken))
            for s, snap in taken:  # sent perhaps: a hung Redis applies it when it wakes
                self.attempted[s.id] = snap.taken_unix
            return 0
        self._reachable()
        stored = 0
        for (s, snap), err in zip(taken, results, strict=True):
            if err is not None:
                self.metrics.snapshot_failures.labels(reason="stale_lease").inc()
                await self._lost(me, s, err)
                continue
            stored += 1
            self.stored[s.id] = snap.taken_unix
            self.attempted.pop(s.id, None)
            if notify and s.attached and me.session_at(s.slot, s.gen) is s:
                me.outbox.event(s.owner, {"ev": "stored", "model": me.idx, "slot": s.slot,
                                          "gen": s.gen, "offset": snap.received})
            if release:
                token = self.tokens.pop(s.id, None)
                if token is not None:
                    try:
                        await self.store.release(s.id, self.owner, token)
                    except StoreUnavailable as exc:
                        self._unavailable(exc)
        if stored:
            self.metrics.snapshots.labels(model=me.name, kind=kind).inc(stored)
        self.metrics.snapshot_seconds.labels(kind=kind).observe(time.perf_counter() - t0)
        return stored

    async def _reclaim(self, me: ModelEngine, s: EngineSession) -> None:
        """Take (back) the lease of a session we hold: after a store outage or a restart of
        Redis the lease may be gone. Refused if another owner holds it, was granted it after
        us (the fence moved on: it may have ended the session) or has stored the session
        since our last snapshot (then it is theirs: close ours)."""
        last = await self.store.last_token(s.id)
        if last is not None and last != self.granted.get(s.id):
            self._moved(me, s, f"another owner was granted the lease (token {last})")
            return
        try:
            token = await self.store.acquire(s.id, self.owner, self.lease_ttl)
        except LeaseHeldError as exc:
            self._moved(me, s, f"lease held by {exc.owner}")
            return
        data = await self.store.get(s.id)
        if data is not None:
            try:
                taken = float(snapshots.read_metadata(data).get("taken_unix", "nan"))
            except snapshots.SnapshotError:  # bytes no one can resume: ours is the only copy
                taken = self.stored.get(s.id)
            except ValueError:
                taken = float("nan")
            if taken != self.stored.get(s.id):
                await self.store.release(s.id, self.owner, token)
                self._moved(me, s, "a newer snapshot from another owner")
                return
        self.tokens[s.id] = token

    async def _lost(self, me: ModelEngine, s: EngineSession, err: StaleLeaseError) -> None:
        self.tokens.pop(s.id, None)
        if err.current is None:  # the lease expired (store outage, restart): take it back
            try:
                await self._reclaim(me, s)
            except StoreUnavailable as exc:
                self._unavailable(exc)
        else:
            self._moved(me, s, f"fencing token {err.token} is stale (now {err.current})")

    async def _waves(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.wave()
            except asyncio.CancelledError:
                raise
            except Exception:  # the wave loop never dies
                log.exception("snapshot wave failed")

    async def wave(self) -> int:
        """Store every attached session of every model (one put_many per model)."""
        n = 0
        async with self._io:
            if self._unforgotten:
                try:
                    await self._retry_forgets()
                except StoreUnavailable:
                    pass  # still down: counted by the wave below, retried by the next
            for me in list(self.models):
                if not me.streamable:
                    continue
                attached = [s for s in me.sessions.values() if s.attached]
                if attached:
                    n += await self._store_wave(me, attached, kind="wave", notify=True)
        return n

    # ---- resume, drain, operator ---------------------------------------------------------
    async def resume(self, me: ModelEngine, owner: int, sid: str, *, offset: int | None,
                     encoding: str, emit_every: int, key: str | None = None) -> dict | None:
        """`start` with a session id: None = continue the local copy (it is current), else
        the `started` facts of the session restored from the store. `key`: the resuming API
        key's name; a stored session of another key is refused (session_forbidden) before
        its lease is touched."""
        s = me.sessions.get(sid)
        if s is not None and await self._local_is_current(me, s):
            return None
        lock = self._restoring.setdefault(sid, asyncio.Lock())
        try:
            async with lock:
                if sid in me.sessions:  # restored by a concurrent resume: session_busy there
                    return None
                return await self._restore(me, owner, sid, offset, encoding, emit_every, key)
        finally:
            if not lock.locked():
                self._restoring.pop(sid, None)

    async def _local_is_current(self, me: ModelEngine, s: EngineSession) -> bool:
        try:
            async with self._io:
                if me.session_at(s.slot, s.gen) is not s:
                    return False
                if s.id in self.tokens:
                    try:
                        await self.store.renew(s.id, self.owner, self.tokens[s.id], self.lease_ttl)
                        return True
                    except StaleLeaseError:
                        self.tokens.pop(s.id, None)
                await self._reclaim(me, s)
                return s.id in self.tokens
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return me.session_at(s.slot, s.gen) is s  # best effort: go on with what we hold

    async def _take_lease(self, sid: str) -> int:
        deadline = time.monotonic() + self.lease_wait
        while True:
            try:
                return await self.store.acquire(sid, self.owner, self.lease_ttl)
            except LeaseHeldError as exc:
                if time.monotonic() >= deadline:
                    token = await self.store.acquire(sid, self.owner, self.lease_ttl, steal=True)
                    log.warning("session %s: lease taken over from %s (it had %d ms left)",
                                short_id(sid), exc.owner, exc.ttl_ms)
                    return token
            await asyncio.sleep(min(0.05, self.lease_wait / 4 or 0.05))

    async def _restore(self, me, owner, sid, offset, encoding, emit_every, key=None) -> dict:
        t0 = time.perf_counter()
        token = None
        try:
            data = await self.store.get(sid)
            if data is None:
                raise StreamError("unknown_session", f"no session {sid!r} here or in the session "
                                  "store (never existed, ended or expired)")
            snap = _owned_by(_of_session(me.decode_snapshot(data), sid), key)
            token = await self._take_lease(sid)
            fresh = await self.store.get(sid)
            if fresh is not None and fresh != data:
                snap = _owned_by(_of_session(me.decode_snapshot(fresh), sid), key)
            if offset is not None and offset > snap.received:
                raise StreamError("offset_gap", f"offset {offset} > {snap.received} samples held "
                                  "(the latest snapshot)")
            info = await me.restore_snapshot(snap, owner, encoding=encoding,
                                             emit_every=emit_every)
        except StoreUnavailable as exc:
            self._unavailable(exc)
            await self._release_quietly(sid, token)
            raise StreamError("store_unavailable",
                              "the session is not here and the session store cannot be reached; "
                              "try again shortly") from exc
        except BaseException:
            await self._release_quietly(sid, token)
            raise
        self._reachable()
        self.tokens[sid] = token
        self.stored[sid] = snap.taken_unix
        self.metrics.snapshot_seconds.labels(kind="restore").observe(time.perf_counter() - t0)
        log.info("session %s restored from the store at offset %d (snapshot %.1fs old)",
                 short_id(sid), snap.received, max(0.0, time.time() - snap.taken_unix))
        return info

    async def _release_quietly(self, sid: str, token: int | None) -> None:
        if token is not None:
            try:
                await self.store.release(sid, self.owner, token)
            except StoreUnavailable:
                pass

    async def park(self, me: ModelEngine, s: EngineSession) -> int:
        """Drain one attached session: store it, release the lease, close it here (the store
        keeps it). Returns the stored offset; StreamError if it could not be stored."""
        async with self._io:
            if me.session_at(s.slot, s.gen) is not s:
                raise StreamError("unknown_session", "the session is closed")
            stored = await self._store_wave(me, [s], kind="drain", release=True)
            if not stored or s.id not in self.stored:
                if me.session_at(s.slot, s.gen) is not s:
                    raise StreamError("session_moved", "the session continues on another replica")
                raise StreamError("store_unavailable", "the session could not be stored")
        offset = int(me.buffers.received[s.slot])
        me._close(s, "shutdown")
        return offset

    async def stored_snapshot(self, sid: str) -> bytes | None:
        try:
            return await self.store.get(sid)
        except StoreUnavailable as exc:
            raise StreamError("store_unavailable", str(exc)) from exc
        except ValueError:  # an id no store holds (empty, too long): never stored
            return None

    async def adopt(self, me: ModelEngine, s: EngineSession) -> None:
        """After an operator restore: this engine owns the session now (the lease is taken
        over at once: the operator moved it on purpose); store it, then release the lease like
        a detach does (it waits for its client, detached)."""
        async with self._io:
            try:
                self.tokens[s.id] = await self.store.acquire(s.id, self.owner, self.lease_ttl,
                                                             steal=True)
            except StoreUnavailable as exc:
                self._unavailable(exc)
                return
            await self._store_wave(me, [s], kind="restore", release=not s.attached)


def _of_session(snap: snapshots.Snapshot, sid: str) -> snapshots.Snapshot:
    """The snapshot, if it is of the session it was stored under. The checksum covers the
    tensors, not the header: a copied or damaged one would install another session's id."""
    if snap.session_id != sid:
        raise StreamError("snapshot_corrupt", "the stored snapshot is of another session")
    return snap


def _owned_by(snap: snapshots.Snapshot, key: str | None) -> snapshots.Snapshot:
    """The snapshot, if the API key named `key` may resume it (its `owner_key`)."""
    if not snapshots.owner_allows(snap.owner_key, key):
        raise StreamError("session_forbidden", "that session belongs to another API key")
    return snap


class _Tokens(dict):
    """session id -> the fencing token of the lease we hold; remembers every grant in
    `Persistence.granted` (kept after a release, to recognise another owner's grant later)."""

    def __init__(self, owner: Persistence):
        super().__init__()
        self._owner = owner

    def __setitem__(self, sid: str, token: int) -> None:
        super().__setitem__(sid, token)
        self._owner.granted[sid] = token
