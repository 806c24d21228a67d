"""CUDA graphs of the streaming step, one per (batch bucket, frame length).

A step of a 4-layer network is ~100 small kernels: at the batch sizes of live streams the GPU
waits on their launches, and the engine's CPU pays for every one. A captured graph replays the
whole step with one launch. The planner pads batches to a few bucket sizes, so a handful of
graphs covers every step; partial frames (`end`, `reset`) and batches above `max_batch` run
eagerly (the same function, same numbers). All graphs share one memory pool: they are replayed
one at a time on the device lane, and each replay's outputs are consumed (scattered into the
slab, logits copied to the host) before the next.

`SlabGraphedStep` puts the whole served step in one graph: the index and the frames copied in
from pinned host buffers, the slab rows gathered by the index, stepped and scattered back, the
logits copied out to a pinned buffer. The device lane then makes two torch calls per step
(replay, synchronize) instead of ~35. Each call is a point where the lane thread gives up the
GIL and must win it back from the engine's event loop, which keeps it up to the interpreter's
switch interval when busy (bench/step_contention.py measures what that costs a step).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger("s4d.backend.torch")


def capture(body, device, pool=None):
    """(graph, body's outputs): `body` run twice on a side stream (lazy inits, autotune), then
    captured. `body` must be safe to run for real (the warm-ups do run it)."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = body()
    return graph, out


class GraphedStep:
    """`step(frames, state) -> (logits, new_state)` replaying a captured graph (shapes fixed)."""

    def __init__(self, streaming, batch: int, length: int, channels: int, pool=None):
        dev = streaming.device
        self.frames = torch.zeros((batch, length, channels), dtype=torch.float32, device=dev)
        self.state = {k: v.clone() for k, v in streaming.zero_state(batch).items()}
        self.graph, (self.logits, self.new_state) = capture(
            lambda: streaming.step(self.frames, self.state), dev, pool)

    def __call__(self, frames: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        self.frames.copy_(frames)
        for k, v in self.state.items():
            v.copy_(state[k])
        self.graph.replay()
        return self.logits, self.new_state


class SlabGraphedStep:
    """One served step of up to `batch` slab rows in one graph: copy the index and the frames
    in from pinned host buffers, gather the rows named by the index, step, scatter the new
    state back into the slab, copy the logits out to a pinned buffer. The device lane then
    makes two torch calls per step (replay, synchronize). Rows past the real ones point at the
    slab's scratch row (`TorchSlabStorage.scratch_row`), so padding never touches a session.
    Bound to one storage: its tensors' addresses are in the graph."""

    def __init__(self, streaming, storage, batch: int, length: int, channels: int, pool=None):
        dev = streaming.device
        self.scratch = storage.scratch_row
        self.frames = torch.zeros((batch, length, channels), dtype=torch.float32, device=dev)
        self.index = torch.full((batch,), self.scratch, dtype=torch.long, device=dev)
        self.frames_host = torch.zeros(self.frames.shape, dtype=torch.float32).pin_memory()
        self.index_host = torch.full((batch,), self.scratch, dtype=torch.long).pin_memory()
        self.logits_host = None  # pinned, shaped by the first (warm-up) run

        def body():  # with the index on the scratch row, the warm-ups write nothing real
            self.index.copy_(self.index_host, non_blocking=True)
            self.frames.copy_(self.frames_host, non_blocking=True)
            tensors = storage.tensors
            state = {k: t.index_select(0, self.index) for k, t in tensors.items()}
            logits, new = streaming.step(self.frames, state)
            for k, t in tensors.items():
                t.index_copy_(0, self.index, new[k])
            if self.logits_host is None:
                self.logits_host = torch.zeros(logits.shape, dtype=torch.float32).pin_memory()
            self.logits_host.copy_(logits, non_blocking=True)

        self.graph, _ = capture(body, dev, pool)
        self.stream = torch.cuda.current_stream(dev)

    def __call__(self, slots, frames) -> np.ndarray:
        """Logits of `len(slots)` sessions after one frame each (`frames` [B', T, C] numpy,
        len(slots) <= B' <= batch; rows past the slots are padding)."""
        n = len(slots)
        index, host = self.index_host.numpy(), self.frames_host.numpy()
        index[:n] = slots
        index[n:] = self.scratch
        host[: len(frames)] = frames
        host[len(frames):] = 0
        self.graph.replay()
        self.stream.synchronize()  # the logits are in; the host buffers are free again
        return self.logits_host.numpy()[:n].copy()


class GraphCache:
    """Graphs by (batch, frame length) up to `max_batch` rows: the buckets are captured at
    start-up (`TorchBackend.prepare_streaming`), any other size on first use."""

    def __init__(self, streaming, channels: int, *, max_batch: int = 2048):
        self.streaming, self.channels, self.max_batch = streaming, channels, max_batch
        self.graphs: dict[tuple[int, int], GraphedStep] = {}
        self.slab_graphs: dict[tuple[int, int], SlabGraphedStep] = {}
        self.storage = None  # the slab the slab graphs are bound to (the first one asked for)
        self.pool = torch.cuda.graph_pool_handle()
        self.disabled = False

    def slab_step(self, storage, batch: int, length: int) -> SlabGraphedStep | None:
        """The whole-step graph for `batch` rows of `storage`, or None (eager path): graphs
        off, a size above `max_batch`, a partial frame, or another storage than the first."""
        if self.storage is None:
            self.storage = storage
        elif storage is not self.storage:
            return None
        return self._cached(self.slab_graphs, batch, length, lambda: SlabGraphedStep(
            self.streaming, storage, batch, length, self.channels, pool=self.pool))

    def get(self, batch: int, length: int) -> GraphedStep | None:
        return self._cached(self.graphs, batch, length, lambda: GraphedStep(
            self.streaming, batch, length, self.channels, pool=self.pool))

    def _cached(self, table: dict, batch: int, length: int, capture_one):
        if self.disabled or batch > self.max_batch or length != self.streaming.frame_size:
            return None
        g = table.get((batch, length))
        if g is None:
            try:
                g = capture_one()
            except Exception:  # a capture failure must never break serving: stay eager
                log.exception("CUDA graph capture failed (batch %d): running eagerly", batch)
                self.disabled = True
                return None
            table[(batch, length)] = g
        return g
