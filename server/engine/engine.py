"""The engine: every model on one device, driven by messages from front-ends.

`Engine.on_message(frontend, header, arrays)` applies a tick's samples and ops;
results go back through `Outbox` as one message per front-end per round. The engine runs in
the server's own process (`--workers 0`) or as its own process behind pyzmq
(`server.engine.process`); the code is the same.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from server.batcher import BatcherBusy
from server.engine.lane import DeviceLane
from server.engine.model_engine import ModelEngine
from server.engine.planner import buckets_upto
from server.engine.wire import ArrayList, lift_arrays
from server.errors import StreamError
from server.gc_pauses import freeze_startup_objects
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("s4d.engine")

Send = Callable[[bytes, dict, list], None]


class Outbox:
    """Per front-end: progress rows, op replies and events, sent as one message per round."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.prog: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        self.ctl: dict[int, list] = defaultdict(list)
        self.evt: dict[int, list] = defaultdict(list)
        self._scheduled = False

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def progress(self, model: int, owners: np.ndarray, slots, gens, consumed, probs) -> None:
        for owner in np.unique(owners).tolist():
            if owner < 0:
                continue  # detached sessions: nobody to tell
            sel = owners == owner
            self.prog[owner][model].append((slots[sel], gens[sel], consumed[sel], probs[sel]))
        self._schedule()

    def reply(self, owner: int, msg: dict) -> None:
        self.ctl[owner].append(msg)
        self._schedule()

    def event(self, owner: int, msg: dict) -> None:
        self.evt[owner].append(msg)
        self._schedule()

    def flush(self) -> None:
        self._scheduled = False
        owners = set(self.prog) | set(self.ctl) | set(self.evt)
        for owner in owners:
            arrays = ArrayList()
            prog = []
            for model, parts in self.prog.pop(owner, {}).items():
                cols = [np.concatenate([p[k] for p in parts]) for k in range(4)]
                prog.append([model, arrays.add(cols[0].astype(np.int32)),
                             arrays.add(cols[1].astype(np.int32)),
                             arrays.add(cols[2].astype(np.int64)),
                             arrays.add(np.ascontiguousarray(cols[3], np.float32))])
            ctl = [lift_arrays(m, arrays) for m in self.ctl.pop(owner, [])]
            header = {"ep": self.engine.epoch, "prog": prog, "ctl": ctl,
                      "evt": self.evt.pop(owner, [])}
            self.engine.send_to(owner, header, arrays.arrays)


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics, *, device: str | None = None,
                 epoch: int | None = None, index: int = 0, watch_frontends: bool = False,
                 shared_rings: bool = False):
        self.settings = settings
        self.metrics = metrics
        self.device = device or settings.resolve_device()
        self.index = index  # session ids start with e<index>- so a resume finds this engine
        self.watch_frontends = watch_frontends  # separate processes that may die silently
        # front-ends are other processes: each writes its sessions' samples into its own
        # staging rings in shared memory (one per model), created here at its hello
        self.shared_rings = shared_rings
        self._staging: dict[tuple[int, int], tuple] = {}  # (owner, model) -> (segment, array)
        self.key_sessions: collections.Counter = collections.Counter()
        self.epoch = epoch if epoch is not None else int(time.time() * 1000) % (1 << 31)
        self.models: list[ModelEngine] = []
        self.by_name: dict[str, ModelEngine] = {}
        self.failed: dict[str, str] = {}
        self.ready = False
        self.load_error: str | None = None
        self.outbox = Outbox(self)
        self._frontends: dict[bytes, int] = {}  # identity -> index
        self._identity: list[bytes] = []
        self._last_seen: dict[int, float] = {}
        self._send: Send | None = None
        self._tasks: list[asyncio.Task] = []
        self._lanes: list[DeviceLane] = []
        self.persistence = None  # server.engine.persistence.Persistence with a session store
        self.store_health = None  # server.engine.store_health.StoreHealth: engine 0's store

    # ---- wiring --------------------------------------------------------------------------
    def attach_transport(self, send: Send) -> None:
        self._send = send

    def send_to(self, owner: int, header: dict, arrays: list) -> None:
        if self._send is not None and 0 <= owner < len(self._identity):
            self._send(self._identity[owner], header, arrays)

    def _owner(self, identity: bytes) -> int:
        idx = self._frontends.get(identity)
        if idx is None:
            idx = self._frontends[identity] = len(self._identity)
            self._identity.append(identity)
        self._last_seen[idx] = time.monotonic()
        return idx

    def _drop_dead_staging(self) -> None:
        """Staging rings of front-ends that went silent and whose process is gone (killed: no
        `bye`; the supervisor starts another, with rings of its own). A silent front-end
        whose process still exists may only be stalled and keeps its rings."""
        for owner in {o for o, _ in self._staging} - self._last_seen.keys():
            if process_gone(self._identity[owner]):
                self._drop_staging(owner)

    @property
    def frontends(self) -> int:
        """Front-ends heard from that have neither said `bye` nor gone silent."""
        return len(self._last_seen)

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.settings.session_store:
            from server.engine.sessions_ops import start_persistence

            self.persistence = start_persistence(self)
            if self.index == 0:  # one check per replica (server/engine/store_health.py)
                from server.engine.store_health import StoreHealth

                self.store_health = StoreHealth(
                    self.persistence.store, metrics=self.metrics,
                    interval_s=self.settings.store_health_interval_s,
                    timeout_s=self.settings.store_health_timeout_s)
                await self.store_health.start()
        self._tasks.append(loop.create_task(self._load(), name="engine-load"))
        self._tasks.append(loop.create_task(self._reaper(), name="engine-reaper"))

    #: called with the error when loading fails (`exit_on_load_error`: the process stops)
    on_load_error = None

    async def _load(self) -> None:
        try:
            await self.load_models()
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model loading failed: %s", self.load_error)
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)

    async def load_models(self) -> None:
        """Load and warm every checkpoint on this engine's device, each on its own lane."""
        import torch

        from server.backends.base import get_backend

        s = self.settings
        backend_cls = get_backend(s.backend)
        threads = s.resolve_compute_threads("cuda" if self.device.startswith("cuda") else "cpu")
        os.environ.setdefault("S4D_ONNX_THREADS", str(threads))
        log.info("engine pid=%d device=%s compute threads=%d", os.getpid(), self.device, threads)

        gpu = cuda_index(self.device)

        def lane_init() -> None:
            torch.set_num_threads(threads)
            if gpu is not None:
                # CUDA's current device is per thread: a lane of the engine on cuda:1 left at
                # device 0 launched Triton kernels and captured graphs on the wrong GPU
                torch.cuda.set_device(gpu)

        lane_init()  # this thread's too (snapshots, restores)

        for name, path in discover(s):
            t0 = time.perf_counter()
            lane = DeviceLane(name, init=lane_init)
            try:
                backend = await lane.submit(lambda p=path, n=name: backend_cls.load(p, self.device, name=n))
                if s.warmup:
                    await lane.submit(backend.warmup)
                storage = None
                if backend.metadata.streamable:
                    storage = await lane.submit(backend.new_slab, s.max_sessions)
                    if s.warmup and backend.pads_batches:  # graphs before the first stream
                        await lane.submit(backend.prepare_streaming, storage,
                                          buckets_upto(s.max_sessions))
            except asyncio.CancelledError:  # stopped while loading (e.g. the port was taken):
                lane.stop()  # wait for the job in hand, or the exit aborts inside torch
                raise
            except Exception as exc:  # a broken checkpoint must not take the others down
                lane.stop()
                if s.model_names() is not None:
                    raise
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                log.error("model %s at %s failed to load, skipped: %s", name, path, exc)
                continue
            self._lanes.append(lane)
            backend.chunk_samples = s.predict_chunk_samples
            me = ModelEngine(
                len(self.models), name, backend, storage, lane, self.metrics, self.outbox,
                id_prefix=f"e{self.index}-", round_interval_s=s.round_interval_ms / 1000,
                batch_settings=dict(
                    window_s=s.batch_window_ms / 1000, max_batch_sequences=s.max_batch_sequences,
                    max_batch_samples=s.max_batch_samples, max_pending=s.max_pending_requests,
                    chunk_samples=s.predict_chunk_samples),
            )
            self.metrics.init_model(name)
            if backend.metadata.streamable:
                from server.snapshot import checkpoint_hash

                me.model_hash = await asyncio.to_thread(checkpoint_hash, path)
            me.persistence = self.persistence
            me.key_sessions = self.key_sessions  # a key's quota counts all models' sessions
            me.start()
            self.models.append(me)
            self.by_name[name] = me
            meta = backend.metadata
            log.info("model_loaded name=%s backend=%s device=%s streamable=%s frame_size=%d "
                     "sample_rate=%d classes=%d parameters=%d load_s=%.2f", name, meta.backend,
                     meta.device, meta.streamable, meta.frame_size, meta.sample_rate,
                     len(meta.classes), meta.parameters, time.perf_counter() - t0)
        self.ready = True
        freeze_startup_objects()
        # the device lane gives up the GIL in every torch call of a step and must win it back
        # from this loop: a busy loop keeps it for up to the switch interval (Python's 5 ms)
        sys.setswitchinterval(self.settings.gil_switch_interval_ms / 1000)
        log.info("ready models=%s", ",".join(self.by_name) or "(none)")

    def staging(self, owner: int, me: ModelEngine) -> str:
        """The front-end `owner`'s staging ring of a model (created at its first hello): the
        only shared memory it writes. Its samples reach the model's own ring (read by the
        engine alone) when a tick commits them for sessions attached to it, so a front-end
        that writes for a session it lost (it was stalled: the session was detached, resumed
        through another front-end, or its slot reused) writes only where nobody reads."""
        key = (owner, me.idx)
        if key not in self._staging:
            from server.engine import shm

            self._staging[key] = shm.create(f"{shm.prefix(os.getpid())}m{me.idx}-f{owner}",
                                            tuple(me.ring_info["shape"]))
        return self._staging[key][0].name

    def _drop_staging(self, owner: int | None = None) -> None:
        """The staging rings of a front-end that writes no more (it said `bye`, or its process
        is gone; a silent one may only be stalled, and keeps its own); None: every one."""
        from server.engine import shm

        for key in [k for k in self._staging if owner in (None, k[0])]:
            seg, _ = self._staging.pop(key)  # no view of it left here
            try:
                seg.close()
            except BufferError:  # a view still alive: the mapping goes with it
                pass
            shm.remove(seg.name)

    async def stop(self) -> None:
        if self.store_health is not None:  # before persistence closes the store's client
            await self.store_health.stop()
        if self.persistence is not None:  # before the lanes stop: snapshots need them
            await self.persistence.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for me in self.models:
            me.close_all("shutdown")
            await me.stop()
        for lane in self._lanes:
            lane.stop()
        for me in self.models:
            me.backend.close()
        self._drop_staging()

    async def _reaper(self) -> None:
        ttl = self.settings.idle_ttl_s
        period = min(1.0, max(0.05, ttl / 4))
        silent = self.settings.frontend_timeout_s
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            # a sweep that wakes late found this process stalled (CPU-starved, paused): what
            # the front-ends sent meanwhile waits unread in the socket, so the stall is not
            # their silence (counted as theirs, every live stream was detached at once)
            stalled, last = now - last - period, now
            if stalled > 0.1 * period:
                for idx in self._last_seen:
                    self._last_seen[idx] += stalled
            for idx, seen in list(self._last_seen.items()):
                if self.watch_frontends and now - seen > silent:  # a front-end died: keep its sessions resumable
                    del self._last_seen[idx]
                    self._forget_owner(idx, f"silent for {now - seen:.1f} s", tell=(
                        f"this server's front-end was silent for {now - seen:.1f} s: the "
                        "session is detached, resume it"))
            self._drop_dead_staging()
            for me in self.models:
                try:
                    n = me.expire(now, ttl)
                except Exception:  # noqa: BLE001 - the reaper must outlive any one failure
                    log.exception("engine: idle-TTL sweep of model %s failed", me.name)
                    continue
                if n:
                    log.info("idle_ttl model=%s evicted=%d", me.name, n)

    def models_info(self, owner: int | None = None) -> list[dict]:
        """Every model's metadata, credit and ring: for the front-end `owner` in another
        process, the shared memory of its own staging ring."""
        out = []
        for me in self.models:
            d = me.metadata.to_dict()
            d["idx"] = me.idx
            d["credit"] = me.credit
            d["ring"] = None
            if me.streamable:
                d["ring"] = dict(me.ring_info)
                if self.shared_rings and owner is not None:
                    d["ring"]["shm"] = self.staging(owner, me)
            out.append(d)
        return out

    # ---- messages ------------------------------------------------------------------------
    def on_message(self, identity: bytes, header: dict, arrays: list[np.ndarray]) -> None:
        owner = self._owner(identity)
        stale = header.get("ep") not in (None, self.epoch)
        if not stale:
            for model, si, gi, ci in header.get("feed", ()):
                source = None  # same process: written straight into the model's ring
                if self.shared_rings:
                    staged = self._staging.get((owner, model))
                    if staged is None:  # no staging ring: it cannot have written samples
                        continue
                    source = staged[1]  # (segment, array)
                self.models[model].feed(arrays[si], arrays[gi], arrays[ci], owner, source)
        for op in header.get("ops", ()):
            kind = op.get("op")
            if kind == "hello":  # a front-end that (again) holds no session of this engine
                self._forget_owner(owner, "holds no streams now")
            if kind in ("hello", "ping"):
                self.outbox.reply(owner, {
                    "req": op.get("req"), "epoch": self.epoch, "ready": self.ready,
                    "load_error": self.load_error, "pid": os.getpid(), "failed": self.failed,
                    "store": self.store_health.state() if self.store_health else None,
                    "models": self.models_info(owner) if kind == "hello" and self.ready
                    else None})
                continue
            if stale:
                if "req" in op:
                    self.outbox.reply(owner, {"req": op["req"], "error": "internal",
                                              "message": "the engine restarted; session state lost"})
                continue
            try:
                self._op(owner, kind, op, arrays)
            except Exception as exc:  # a bad op must never take the engine down
                log.exception("engine: op %s failed", kind)
                if "req" in op:
                    self.outbox.reply(owner, {"req": op["req"], "error": "internal",
                                              "message": type(exc).__name__})

    def _forget_owner(self, owner: int, why: str, tell: str | None = None) -> None:
        """The front-end holds none of this engine's sessions any more (it stopped, went
        silent, or declared this engine lost and failed its streams): the ones still attached
        to it stay resumable for the idle TTL instead of staying attached, and busy, for ever.
        `tell`: it may still be alive, so each session is also reported closed to it."""
        n = sum(me.detach_owner(owner, tell=tell) for me in self.models)
        for me in self.models:
            me.release_owner(owner)
        if n:
            log.warning("front-end %s %s: %d session(s) detached (resumable for the idle TTL)",
                        self._identity[owner], why, n)

    def _op(self, owner: int, kind: str, op: dict, arrays: list[np.ndarray]) -> None:
        if kind == "open":
            asyncio.get_running_loop().create_task(self._open(owner, op))
        elif kind == "flush":
            self.models[op["model"]].flush(owner, op["req"], op["slot"], op["gen"],
                                           reset=bool(op.get("reset")), end=bool(op.get("end")))
        elif kind == "detach":
            self.models[op["model"]].detach(op["slot"], op["gen"], owner)
        elif kind == "close":
            self.models[op["model"]].close(op["slot"], op["gen"], op.get("reason", "error"),
                                           owner)
        elif kind == "predict":
            data, lengths = arrays[op["data"]], arrays[op["lengths"]]
            asyncio.get_running_loop().create_task(self._predict(owner, op, data, lengths))
        elif kind == "released":
            self.models[op["model"]].release(owner, op["slot"], op["gen"])
        elif kind in ("snapshot", "restore", "park"):
            from server.engine.sessions_ops import run_session_op

            asyncio.get_running_loop().create_task(run_session_op(self, owner, kind, op, arrays))
        elif kind == "bye":  # a front-end stops: its sessions stay resumable
            self._forget_owner(owner, "said bye")
            self._last_seen.pop(owner, None)
            self._drop_staging(owner)
        else:
            raise ValueError(f"unknown op {kind!r}")

    async def _open(self, owner: int, op: dict) -> None:
        try:
            me = self.models[op["model"]]
            info = await me.open(owner, session_id=op.get("session_id"), offset=op.get("offset"),
                                 encoding=op["encoding"], emit_every=op["emit_every"],
                                 key=op.get("key"), key_max=op.get("key_max"),
                                 create_id=op.get("create_id"))
            self.outbox.reply(owner, {"req": op["req"], "opened": me.idx, **info})
        except StreamError as err:
            self.outbox.reply(owner, {"req": op["req"], "error": err.code, "message": err.message})
        except Exception as exc:
            log.exception("engine: open failed")
            self.outbox.reply(owner, {"req": op["req"], "error": "internal",
                                      "message": type(exc).__name__})

    async def _predict(self, owner: int, op: dict, data: np.ndarray, lengths: np.ndarray) -> None:
        me = self.models[op["model"]]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        seqs = [data[bounds[i]:bounds[i + 1]] for i in range(len(lengths))]
        try:
            logits = await me.batcher.predict(seqs, frames=bool(op.get("frames")))
        except BatcherBusy as exc:
            self.outbox.reply(owner, {"req": op["req"], "error": "server_busy", "message": str(exc)})
            return
        except Exception as exc:
            shutting = isinstance(exc, RuntimeError) and "shutting down" in str(exc)
            if not shutting:
                log.exception("engine: predict failed")
            self.outbox.reply(owner, {
                "req": op["req"], "error": "shutting_down" if shutting else "internal",
                "message": "the server is shutting down" if shutting else type(exc).__name__})
            return
        shapes = [list(x.shape) for x in logits]
        flat = np.concatenate([np.asarray(x, np.float32).reshape(-1) for x in logits])
        self.outbox.reply(owner, {"req": op["req"], "shapes": shapes, "logits": flat})


def discover(settings: Settings) -> list[tuple[str, Path]]:
    """Checkpoint folders (with config.json) to serve, by name."""
    root = Path(settings.checkpoints)
    wanted = settings.model_names()
    if not root.is_dir():
        log.warning("checkpoints folder %s does not exist: serving no models", root)
        found: dict[str, Path] = {}
    else:
        found = {p.name: p for p in sorted(root.iterdir())
                 if p.is_dir() and (p / "config.json").is_file()}
    if wanted is None:
        if not found:
            log.warning("no checkpoints (folders with config.json) in %s: serving no models", root)
        return list(found.items())
    missing = [w for w in wanted if w not in found]
    if missing:
        raise FileNotFoundError(
            f"requested model(s) {missing} not found in {root} (available: {sorted(found)})")
    return [(w, found[w]) for w in wanted]


def cuda_index(device: str, current: Callable[[], int] | None = None) -> int | None:
    """The GPU an engine's threads make current: N of "cuda:N"; for a bare "cuda" (the
    one-process server's `--device auto` / `cuda`) the GPU current where it is resolved, as
    torch places "cuda" tensors there (`torch.cuda.set_device` refuses a device without an
    index); None for the CPU."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    if dev.index is not None:
        return dev.index
    return (current or torch.cuda.current_device)()


def process_gone(identity: bytes) -> bool:
    """Whether the front-end process an identity names (`fe<index>-<pid>`, a process of this
    host) no longer exists. A pid that exists is taken as the front-end (stalled, or a zombie
    its supervisor has not reaped yet): the safe side, its rings stay a while longer."""
    try:
        pid = int(identity.rsplit(b"-", 1)[1])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: it exists
        return False
    return False
