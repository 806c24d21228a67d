"""The engine's own CPU per stream frame, without sockets or a model: N simulated kws streams
from F front-ends feed an in-process `Engine` through `on_message` (the same messages the
front-ends send) for D seconds of audio as fast as it goes; the backend step is a no-op, so
what is measured is the engine's Python work (commits, planner, frame reads, outbox). The
samples are written into the ring as a front-end does (`write_ring`); that time is reported
apart, since in a real server the front-end processes pay it.
`python -m bench.engine_overhead --streams 2000 --frontends 8 --seconds 2 [--profile]`
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time

import numpy as np

from server.backends.base import Backend, ModelMetadata
from server.engine.buffers import write_ring
from server.engine.engine import Engine
from server.engine.lane import DeviceLane
from server.engine.model_engine import ModelEngine
from server.metrics import Metrics
from server.settings import Settings
from server.slab import NumpySlabStorage


class NoopBackend(Backend):
    """A model whose step costs nothing (the engine's defaults for everything else)."""

    name = "noop"

    @classmethod
    def load(cls, checkpoint_dir, device, *, name=None):
        raise NotImplementedError

    def new_slab(self, max_sessions):
        return NumpySlabStorage({"x": np.zeros((1, 1), np.float32)}, max_sessions)

    def __init__(self, frame: int, classes: int = 12):
        self.metadata = ModelMetadata(
            name="noop", description="", task="t", sample_rate=16000, input_channels=1,
            classes=tuple(f"c{i}" for i in range(classes)), frame_size=frame, patch_size=16,
            streamable=True, state_bytes_per_session=4, parameters=0, pooling="mean",
            backend="noop", device="cpu")
        self.logits = np.zeros((8192, classes), np.float32)

    def step(self, frames, state):
        return self.logits[: len(frames)], state

    def predict(self, batch, lengths):
        raise NotImplementedError


async def run(args) -> dict:
    frame = 320
    engine = Engine(Settings(warmup=False), Metrics(), device="cpu")
    be = NoopBackend(frame)
    storage = be.new_slab(args.streams)
    me = ModelEngine(0, "noop", be, storage, DeviceLane("noop"), engine.metrics, engine.outbox,
                     batch_settings=dict(window_s=0.0, max_batch_sequences=1,
                                         max_batch_samples=1), round_interval_s=args.round_ms / 1e3)
    engine.models.append(me)
    engine.ready = True
    me.start()
    received = [0]
    engine.attach_transport(lambda ident, header, arrays: received.__setitem__(
        0, received[0] + sum(len(arrays[p[1]]) for p in header["prog"])))
    owners = [f"fe{i}".encode() for i in range(args.frontends)]
    handles = []
    for i in range(args.streams):
        info = await me.open(i % args.frontends, session_id=None, offset=None,
                             encoding="pcm_s16le", emit_every=frame)
        handles.append((info["slot"], info["gen"]))
    for ident in owners:
        engine.on_message(ident, {"ops": []}, [])
    slots = np.array([h[0] for h in handles], np.int32)
    gens = np.array([h[1] for h in handles], np.int32)
    per_fe = [np.arange(f, args.streams, args.frontends) for f in range(args.frontends)]
    chunk = np.random.default_rng(0).standard_normal((frame, 1)).astype(np.float32)
    frames_total = int(args.seconds * 16000 / frame) * args.streams
    # every tick each front-end sends a 1/ticks share of its sessions' 20 ms chunks
    ticks_per_frame = max(1, round(20 / args.tick_ms))
    prof = cProfile.Profile() if args.profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    sent = 0
    k = 0
    write_s = 0.0
    buf = me.buffers
    while sent < frames_total:
        for f, ident in enumerate(owners):
            mine = per_fe[f][k % ticks_per_frame::ticks_per_frame]
            if not len(mine):
                continue
            counts = np.full(len(mine), frame, np.int32)
            w0 = time.process_time()
            for slot in slots[mine].tolist():  # the front-end's share
                write_ring(buf.data, buf.ring, slot, int(buf.received[slot]), chunk)
            write_s += time.process_time() - w0
            engine.on_message(ident, {"feed": [[0, 0, 1, 2]], "ops": []},
                              [slots[mine], gens[mine], counts])
            sent += len(mine)
        k += 1
        # let the engine work until it has caught up (a real engine sees ticks meanwhile)
        while me.buffers.available(slots.astype(np.int64)).max() >= 8 * frame:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
    while received[0] < frames_total:
        await asyncio.sleep(0.001)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0 - write_s
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    await me.stop()
    return {"streams": args.streams, "frontends": args.frontends, "frames": frames_total,
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "cpu_us_per_frame": round(cpu / frames_total * 1e6, 2),
            "frontend_write_us_per_frame": round(write_s / frames_total * 1e6, 2),
            "frames_per_cpu_s": round(frames_total / cpu),
            "kws_streams_per_core": round(frames_total / cpu / 50)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--streams", type=int, default=2000)
    p.add_argument("--frontends", type=int, default=8)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--tick-ms", type=float, default=4.0)
    p.add_argument("--round-ms", type=float, default=4.0)
    p.add_argument("--profile", action="store_true")
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
