"""Micro-batching of concurrent predict requests into padded batched forwards."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np

from server.backends.base import Backend
from server.tasks import cancel_and_wait

log = logging.getLogger("s4d.batcher")


class BatcherBusy(RuntimeError):
    """Too many predict requests queued: answered 503 server_busy."""


class PredictBatcher:
    """Collects requests for ``window_s``, sorts their sequences by length and runs them as few
    padded forwards as the ``max_batch_sequences`` / ``max_batch_samples`` budgets allow."""

    def __init__(
        self,
        backend: Backend,
        device: Callable[..., Awaitable],
        *,
        window_s: float,
        max_batch_sequences: int,
        max_batch_samples: int,
        max_pending: int = 256,
        chunk_samples: int = 0,
    ):
        self.backend = backend
        self.device = device  # device(fn, *args) runs fn on the model's device lane
        self.window_s = window_s
        self.max_batch_sequences = max_batch_sequences
        self.max_batch_samples = max_batch_samples
        self.max_pending = max_pending
        # sequences longer than this run as chunks of it through the exact recurrence, one
        # device job per chunk, so stream steps interleave (0: always one FFT forward)
        self.chunk_samples = chunk_samples
        self.pending = 0  # requests queued or running
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="predict-batcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        while not self._queue.empty():
            _, fut, _ = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("server is shutting down"))

    async def predict(self, sequences: list[np.ndarray], frames: bool = False) -> list[np.ndarray]:
        """Logits per sequence ([K], or [L // patch, K] for pooling none). Each is [L, C].
        `frames`: instead, the logits after every frame end, [F, K] (`Backend.predict_frames`:
        what a stream's event detector sees)."""
        if self.pending >= self.max_pending:
            raise BatcherBusy(f"{self.pending} predict requests pending; try again later")
        fut = asyncio.get_running_loop().create_future()
        self.pending += 1
        try:
            await self._queue.put((sequences, fut, frames))
            return await fut
        finally:
            self.pending -= 1

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            count = len(items[0][0])
            deadline = time.monotonic() + self.window_s
            while count < self.max_batch_sequences:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                items.append(item)
                count += len(item[0])
            try:
                results = await self._run_items(items)
            except asyncio.CancelledError:
                for _, fut, _ in items:
                    if not fut.done():
                        fut.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, fut, _ in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut, _), res in zip(items, results, strict=True):
                if not fut.done():
                    fut.set_result(res)

    async def _run_items(self, items) -> list[list[np.ndarray]]:
        out: list[list] = [[None] * len(seqs) for seqs, _, _ in items]
        for frames in (False, True):
            flat = [(i, j, seq) for i, (seqs, _, f) in enumerate(items) if f == frames
                    for j, seq in enumerate(seqs)]
            flat.sort(key=lambda t: len(t[2]))
            await self._run_flat(flat, out, frames)
        return out

    async def _run_flat(self, flat, out, frames: bool) -> None:
        forward = self._forward_frames if frames else self._forward
        group: list = []
        for entry in flat:
            longest = len(entry[2])  # sorted: the newcomer is the longest
            if group and (
                len(group) + 1 > self.max_batch_sequences
                or (len(group) + 1) * longest > self.max_batch_samples
            ):
                await forward(group, out)
                group = []
            group.append(entry)
        if group:
            await forward(group, out)

    async def _forward_frames(self, group, out) -> None:
        lengths = np.array([len(seq) for _, _, seq in group], np.int64)
        batch = np.zeros((len(group), int(lengths.max()), group[0][2].shape[1]), np.float32)
        for k, (_, _, seq) in enumerate(group):
            batch[k, : len(seq)] = seq
        rows = await self.device(self.backend.predict_frames, batch, lengths)
        for (i, j, _), row in zip(group, rows, strict=True):
            out[i][j] = row

    async def _forward(self, group, out) -> None:
        chunked = getattr(self.backend, "predict_chunked", None)
        if self.chunk_samples and chunked is not None and self.backend.metadata.streamable:
            long = [e for e in group if len(e[2]) > self.chunk_samples]
            for i, j, seq in long:
                out[i][j] = await self._chunked(seq)
            group = [e for e in group if len(e[2]) <= self.chunk_samples]
            if not group:
                return
        lengths = np.array([len(seq) for _, _, seq in group], np.int64)
        c = group[0][2].shape[1]
        batch = np.zeros((len(group), int(lengths.max()), c), np.float32)
        for k, (_, _, seq) in enumerate(group):
            batch[k, : len(seq)] = seq
        logits = await self.device(self.backend.predict, batch, lengths)
        patch = self.backend.metadata.patch_size
        for k, (i, j, _) in enumerate(group):
            row = logits[k]
            if row.ndim == 2:  # pooling none: keep the valid steps
                row = row[: int(lengths[k]) // patch]
            out[i][j] = np.array(row, copy=True)

    async def _chunked(self, seq: np.ndarray) -> np.ndarray:
        """One long sequence through the backend's recurrent form, a chunk per device job:
        between chunks the device lane runs waiting stream steps first. Exact: the same state
        the batch forward would carry (tested against it)."""
        state = None
        outs = []
        for start in range(0, len(seq), self.chunk_samples):
            part = seq[start:start + self.chunk_samples]
            logits, state = await self.device(self.backend.predict_chunked, part, state)
            if logits is None:  # a tail shorter than one patch: ignored, as in the batch path
                break
            outs.append(logits)
        if outs[0].ndim == 2:  # pooling none: per-step outputs of every chunk
            return np.concatenate(outs)
        return outs[-1]
