"""Model registry: discovers checkpoints, loads each once, warms it up, owns its workers."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from server.backends.base import Backend, ModelMetadata, get_backend
from server.batcher import PredictBatcher
from server.metrics import Metrics
from server.scheduler import ModelScheduler
from server.settings import Settings
from server.slab import StateSlab

log = logging.getLogger("s4d.registry")


@dataclass
class LoadedModel:
    name: str
    path: Path
    backend: Backend
    executor: ThreadPoolExecutor
    batcher: PredictBatcher
    scheduler: ModelScheduler | None = None  # None: batch-only (bidirectional)
    load_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def metadata(self) -> ModelMetadata:
        return self.backend.metadata


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self.ready = False
        self.failed: dict[str, str] = {}
        self.device = settings.resolve_device()

    def discover(self) -> list[tuple[str, Path]]:
        root = Path(self.settings.checkpoints)
        wanted = self.settings.model_names()
        if not root.is_dir():
            log.warning("checkpoints folder %s does not exist: serving no models", root)
            found: dict[str, Path] = {}
        else:
            found = {
                p.name: p for p in sorted(root.iterdir())
                if p.is_dir() and (p / "config.json").is_file()
            }
        if wanted is None:
            if not found:
                log.warning("no checkpoints (folders with config.json) in %s: serving no models", root)
            return list(found.items())
        missing = [w for w in wanted if w not in found]
        if missing:
            raise FileNotFoundError(
                f"requested model(s) {missing} not found in {root} (available: {sorted(found)})"
            )
        return [(w, found[w]) for w in wanted]

    async def load_all(self) -> None:
        """Load and warm every model (in worker threads), then mark the registry ready."""
        backend_cls = get_backend(self.settings.backend)
        s = self.settings
        threads = s.resolve_compute_threads()
        torch.set_num_threads(threads)
        os.environ.setdefault("S4D_ONNX_THREADS", str(threads))
        log.info("compute threads: %d (device %s)", threads, self.device)
        for name, path in self.discover():
            t0 = time.perf_counter()
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"s4d-{name}")
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(executor, torch.set_num_threads, threads)
                backend = await loop.run_in_executor(
                    executor, lambda p=path, n=name: backend_cls.load(p, self.device, name=n)
                )
                if s.warmup:
                    await loop.run_in_executor(executor, backend.warmup)
                scheduler = None
                if backend.metadata.streamable:
                    storage = await loop.run_in_executor(executor, backend.new_slab, s.max_sessions)
                    scheduler = ModelScheduler(
                        name, backend, StateSlab(storage), executor, self.metrics,
                        max_buffer_samples=s.max_buffer_samples,
                    )
            except Exception as exc:  # a broken checkpoint must not take the others down
                executor.shutdown(wait=False)
                if s.model_names() is not None:
                    raise
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                log.error("model %s at %s failed to load, skipped: %s", name, path, exc)
                continue
            batcher = PredictBatcher(
                backend, executor, window_s=s.batch_window_ms / 1000,
                max_batch_sequences=s.max_batch_sequences, max_batch_samples=s.max_batch_samples,
                max_pending=s.max_pending_requests,
            )
            lm = LoadedModel(name, path, backend, executor, batcher, scheduler,
                             load_seconds=time.perf_counter() - t0)
            self.metrics.init_model(name)
            batcher.start()
            if scheduler is not None:
                scheduler.start()
            self.models[name] = lm
            meta = backend.metadata
            log.info(
                "model_loaded name=%s backend=%s device=%s streamable=%s frame_size=%d "
                "sample_rate=%d classes=%d parameters=%d load_s=%.2f",
                name, meta.backend, meta.device, meta.streamable, meta.frame_size,
                meta.sample_rate, len(meta.classes), meta.parameters, lm.load_seconds,
            )
        self.ready = True
        log.info("ready models=%s", ",".join(self.models) or "(none)")

    def get(self, name: str) -> LoadedModel | None:
        return self.models.get(name)

    async def close(self) -> None:
        for lm in self.models.values():
            if lm.scheduler is not None:
                await lm.scheduler.stop()
            await lm.batcher.stop()
            lm.executor.shutdown(wait=False, cancel_futures=True)
            lm.backend.close()
