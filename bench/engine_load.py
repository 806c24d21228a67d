"""The engine's main-thread CPU per frame under a real-time stream load, without sockets.

With 15 front-ends the engine process becomes a GPU server's limit: one Python thread takes
every front-end's ticks, plans the rounds, hands steps to the device lane and sends the
results back. This drives `Engine.on_message` in one process as F front-ends would (each writes
its sessions' samples into the model's ring and sends one tick every `--tick-ms` with the
sessions whose next frame came due; N sessions staggered over a frame), encodes every reply as
the pyzmq path does, and reports CPU microseconds per answered frame: the engine's main thread
(what the load measures) apart from the device lane (the model's step: on a GPU, launches).

    python -m bench.engine_load --checkpoints checkpoints --model kws-s4d --sessions 2000

`bench.engine_overhead` asks how fast the engine's Python work can go (a no-op step, as fast as
possible); this one asks how busy a real engine is at real time, with the model's real step on
its device, the main thread apart from the lane.

`--null-step` swaps the model's step for one that returns zero logits and the state unchanged:
on a CPU the real step of 2,000 sessions cannot keep real time, and what is measured here is
the host path around it (on a GPU the step is a graph replay on the lane thread).

As served with `--workers`, each front-end writes its own staging ring in shared memory (created
by the engine at the front-end's `hello`) and the engine copies in what each tick commits
(`SlotBuffers.copy_in`): that copy is on the main thread and measured here. `--direct-ring`
writes straight into the engine's ring instead (the one-process server; the workers' path
before the staging rings).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import time

import numpy as np

from server.engine import shm
from server.engine.buffers import write_ring
from server.engine.engine import Engine
from server.engine.wire import encode
from server.metrics import Metrics
from server.settings import Settings


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(args: argparse.Namespace) -> dict:
    settings = Settings(checkpoints=args.checkpoints, models=args.model, device=args.device,
                        max_sessions=args.sessions + 8, log_level="warning",
                        round_interval_ms=args.round_ms)
    engine = Engine(settings, Metrics(), device=args.device, shared_rings=not args.direct_ring)
    replies: dict[int, dict] = {}
    answered = [0]
    consumed: dict[int, int] = {}  # slot -> samples the engine consumed (the credit's basis)

    def send(_identity: bytes, header: dict, arrays: list) -> None:
        encode(header, arrays)  # what the pyzmq path pays before its send
        for msg in header.get("ctl", ()):
            replies[msg.get("req")] = msg
        for _model, si, _gi, ci, _pi in header.get("prog", ()):
            answered[0] += len(arrays[si])
            consumed.update(zip(arrays[si].tolist(), arrays[ci].tolist(), strict=True))

    engine.attach_transport(send)
    await engine.start()
    while not engine.ready:
        if engine.load_error:
            raise RuntimeError(engine.load_error)
        await asyncio.sleep(0.05)
    me = engine.models[0]
    if args.null_step:
        classes = len(me.metadata.classes)
        me.backend.step = lambda frames, state: (np.zeros((len(frames), classes), np.float32),
                                                 state)
    frame, ring = me.frame, me.buffers.ring
    fes = [f"fe{i}".encode() for i in range(args.frontends)]
    targets, mappings = [me.buffers.data] * len(fes), []  # where each front-end writes
    if not args.direct_ring:  # each its own staging ring, from its hello as a front-end does
        for i, fe in enumerate(fes):
            engine.on_message(fe, {"ep": None, "ops": [{"op": "hello", "req": f"h{i}"}]}, [])
        while not all(f"h{i}" in replies for i in range(len(fes))):
            await asyncio.sleep(0.01)
        for i in range(len(fes)):
            info = replies[f"h{i}"]["models"][0]["ring"]
            mapping, targets[i] = shm.attach(info["shm"], tuple(info["shape"]))
            mappings.append(mapping)
    for i in range(args.sessions):
        engine.on_message(fes[i % len(fes)], {"ep": None, "ops": [{
            "op": "open", "req": i, "model": 0, "session_id": None, "offset": None,
            "encoding": "pcm_s16le", "emit_every": frame}]}, [])
    while len(replies) < args.sessions:
        await asyncio.sleep(0.01)
    slots = np.array([replies[i]["slot"] for i in range(args.sessions)], np.int32)
    gens = np.array([replies[i]["gen"] for i in range(args.sessions)], np.int32)
    rows = (np.random.default_rng(0).standard_normal((frame, me.metadata.input_channels))
            * 0.1).astype(np.float32)
    frame_s = frame / me.metadata.sample_rate
    phase = np.arange(args.sessions) * frame_s / args.sessions  # staggered frame boundaries
    sent = np.zeros(args.sessions, np.int64)  # frames written per session
    owner = np.arange(args.sessions) % len(fes)
    pauses: list[tuple[int, float]] = []  # (generation, seconds) of every collection
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append((info["generation"], time.perf_counter() - started.pop()))

    loop = asyncio.get_running_loop()
    t_start = loop.time()
    window = (t_start + args.warmup, t_start + args.warmup + args.duration)
    fe_cpu = 0.0  # the simulated front-ends' share of the main thread, taken out below
    marks: dict[str, tuple] = {}
    tick = args.tick_ms / 1000
    next_tick = t_start
    while True:
        now = loop.time()
        if "start" not in marks and now >= window[0]:
            marks["start"] = (time.thread_time(), _cpu_s(), answered[0], fe_cpu, now)
            gc.callbacks.append(on_gc)
        if now >= window[1]:
            marks["end"] = (time.thread_time(), _cpu_s(), answered[0], fe_cpu, now)
            gc.callbacks.remove(on_gc)
            break
        c0 = time.thread_time()
        due = np.floor((now - t_start - phase) / frame_s).astype(np.int64) + 1
        done = np.array([consumed.get(int(x), 0) for x in slots.tolist()]) // frame
        new = (due > sent) & ((sent - done + 1) * frame <= ring)  # within the credit
        for f, ident in enumerate(fes):
            idx = np.flatnonzero(new & (owner == f))
            if not len(idx):
                continue
            for i in idx.tolist():
                write_ring(targets[f], ring, int(slots[i]), int(sent[i]) * frame, rows)
            sent[idx] += 1
            fe_cpu += time.thread_time() - c0
            engine.on_message(ident, {"ep": engine.epoch, "feed": [[0, 0, 1, 2]], "ops": []},
                              [slots[idx], gens[idx], np.full(len(idx), frame, np.int32)])
            c0 = time.thread_time()
        fe_cpu += time.thread_time() - c0
        next_tick += tick
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
    await engine.stop()
    (m0, p0, a0, f0, t0), (m1, p1, a1, f1, t1) = marks["start"], marks["end"]
    frames = max(1, a1 - a0)
    main_us = 1e6 * ((m1 - m0) - (f1 - f0)) / frames
    return {
        "model": args.model, "sessions": args.sessions, "frontends": args.frontends,
        "tick_ms": args.tick_ms, "round_ms": args.round_ms, "device": args.device,
        "null_step": args.null_step, "staging_rings": not args.direct_ring,
        "frames_answered": frames, "frames_due": int(args.sessions * (t1 - t0) / frame_s),
        "engine_main_us_per_frame": round(main_us, 2),
        "lane_and_other_threads_us_per_frame": round(1e6 * ((p1 - p0) - (m1 - m0)) / frames, 2),
        "main_thread_busy": round(((m1 - m0) - (f1 - f0)) / (t1 - t0), 3),
        # the cyclic collector in the window: collections per generation, longest pause
        "gc_collections": [sum(g == k for g, _ in pauses) for k in range(3)],
        "gc_longest_ms": round(1e3 * max((d for _, d in pauses), default=0.0), 2),
        "gc_frozen_objects": gc.get_freeze_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--model", default="kws-s4d")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--frontends", type=int, default=15)
    p.add_argument("--tick-ms", type=float, default=4.0)
    p.add_argument("--round-ms", type=float, default=4.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--direct-ring", action="store_true",
                   help="front-ends write the engine's ring itself (no staging rings, no copy-in)")
    p.add_argument("--null-step", action="store_true",
                   help="a zero-cost stand-in for the model's step (host path only)")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        out = asyncio.run(run(args))
    else:
        out = uvloop.run(run(args))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
