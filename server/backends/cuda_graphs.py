"""CUDA graphs of the streaming step, one per (batch bucket, frame length).

A step of a 4-layer network is ~100 small kernels: at the batch sizes of live streams the GPU
waits on their launches, and the engine's CPU pays for every one. A captured graph replays the
whole step with one launch. The planner pads batches to a few bucket sizes, so a handful of
graphs covers every step; partial frames (`end`, `reset`) and batches above `max_batch` run
eagerly (the same function, same numbers). All graphs share one memory pool: they are replayed
one at a time on the device lane, and each replay's outputs are consumed (scattered into the
slab, logits copied to the host) before the next.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("s4d.backend.torch")


class GraphedStep:
    """`step(frames, state) -> (logits, new_state)` replaying a captured graph (shapes fixed)."""

    def __init__(self, streaming, batch: int, length: int, channels: int, pool=None):
        dev = streaming.device
        self.frames = torch.zeros((batch, length, channels), dtype=torch.float32, device=dev)
        self.state = {k: v.clone() for k, v in streaming.zero_state(batch).items()}
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up outside the capture (lazy inits, autotune)
            for _ in range(2):
                streaming.step(self.frames, self.state)
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.logits, self.new_state = streaming.step(self.frames, self.state)

    def __call__(self, frames: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        self.frames.copy_(frames)
        for k, v in self.state.items():
            v.copy_(state[k])
        self.graph.replay()
        return self.logits, self.new_state


class GraphCache:
    """Graphs by (batch, frame length) up to `max_batch` rows: the buckets are captured at
    start-up (`TorchBackend.prepare_streaming`), any other size on first use."""

    def __init__(self, streaming, channels: int, *, max_batch: int = 2048):
        self.streaming, self.channels, self.max_batch = streaming, channels, max_batch
        self.graphs: dict[tuple[int, int], GraphedStep] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.disabled = False

    def get(self, batch: int, length: int) -> GraphedStep | None:
        if self.disabled or batch > self.max_batch or length != self.streaming.frame_size:
            return None
        g = self.graphs.get((batch, length))
        if g is None:
            try:
                g = GraphedStep(self.streaming, batch, length, self.channels, pool=self.pool)
            except Exception:  # a capture failure must never break serving: stay eager
                log.exception("CUDA graph capture failed (batch %d): running eagerly", batch)
                self.disabled = True
                return None
            self.graphs[(batch, length)] = g
        return g
