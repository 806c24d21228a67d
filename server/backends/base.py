"""The backend interface: everything the server needs from an inference engine.

A backend owns one loaded checkpoint on one device and offers two exact paths:

* batch: ``predict(batch [B, L, C] float32, lengths [B] int64) -> logits`` (FFT convolution);
* streaming: a state slab (``new_slab``) plus ``step(frames, state) -> (logits, state)``.

Host-side arrays crossing the interface are NumPy float32 (inputs, logits). Streaming state stays
backend-native (torch tensors on the device, NumPy arrays for ONNX Runtime, ...): the server
never looks inside it, it only moves it through the slab's ``gather``/``scatter``/``zero``.
Every method is called from the model's single device-worker thread, never concurrently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

#: backend-native streaming state: one array per state name, batch (session) dimension first
State = dict[str, Any]


class BackendError(RuntimeError):
    """A checkpoint cannot be served by this backend (clear message for the operator)."""


def resolved_events(cfg, class_names: list[str]) -> dict[str, Any]:
    """A checkpoint's `task.events` with the background labels spelled out (META `events`)."""
    d = cfg.model_dump()
    d["background"] = cfg.background_labels(class_names)
    return d


@dataclass(frozen=True)
class ModelMetadata:
    """What `GET /v1/models/{name}` reports (PROTOCOL.md META)."""

    name: str
    description: str
    task: str
    sample_rate: int
    input_channels: int
    classes: tuple[str, ...]
    frame_size: int
    patch_size: int
    streamable: bool
    state_bytes_per_session: int
    parameters: int
    pooling: str
    backend: str
    device: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    #: default event detection of streams (PROTOCOL.md META `events`; model/events.py)
    events: dict[str, Any] = field(default_factory=dict, compare=False)
    #: what one input sample means (config `task.input_units`, e.g. "mV"); "" = not stated
    input_units: str = ""

    @classmethod
    def from_checkpoint(
        cls, name: str, config, *, frame_size: int, streamable: bool, parameters: int,
        backend: str, device: str, extra: dict[str, Any] | None = None,
    ) -> ModelMetadata:
        """META of a checkpoint (`model.config.CheckpointConfig`), whatever engine serves it."""
        from model.state import state_bytes_per_session

        task, m = config.task, config.model
        return cls(
            name=name,
            description=task.description,
            task=task.name,
            sample_rate=task.sample_rate,
            input_channels=task.input_channels,
            classes=tuple(config.class_names()),
            frame_size=frame_size,
            patch_size=m.patch_size,
            streamable=streamable,
            state_bytes_per_session=state_bytes_per_session(m) if streamable else 0,
            parameters=parameters,
            pooling=m.pooling,
            backend=backend,
            device=device,
            extra=extra or {},
            events=resolved_events(task.events, list(config.class_names())),
            input_units=task.input_units,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["classes"] = list(self.classes)
        return d


@runtime_checkable
class SlabStorage(Protocol):
    """Per-model streaming state for ``capacity`` sessions, addressed by slot index.

    ``server.slab`` provides ready implementations for torch tensors and NumPy arrays.
    """

    capacity: int
    bytes_per_session: int

    def zero(self, slots: Sequence[int]) -> None:
        """Reset the state of these slots (a fresh session / a `reset`)."""

    def gather(self, slots: Sequence[int], pad_to: int | None = None) -> State:
        """State rows of ``slots`` in that order, followed by zero rows up to ``pad_to``."""

    def scatter(self, slots: Sequence[int], state: State) -> None:
        """Write rows ``0..len(slots)-1`` of ``state`` back to ``slots`` (padding rows dropped)."""


class Backend(ABC):
    """One checkpoint loaded for serving. Subclasses register under ``name``."""

    name: ClassVar[str]
    metadata: ModelMetadata

    @classmethod
    @abstractmethod
    def load(cls, checkpoint_dir: Path, device: str, *, name: str | None = None) -> Backend:
        """Load ``checkpoint_dir`` (config.json + weights) on ``device`` ("cpu" | "cuda").

        ``name`` defaults to the folder name. Raises ``BackendError`` / ``ValueError`` with a
        clear message on a bad checkpoint. Non-streamable models still load (batch only).
        """

    @property
    def frame_size(self) -> int:
        """Samples per streaming frame (a multiple of ``metadata.patch_size``)."""
        return self.metadata.frame_size

    @abstractmethod
    def predict(self, batch: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Batch forward. ``batch`` float32 [B, L, C] right-padded, ``lengths`` int64 [B].

        Returns float32 logits [B, K] (pooling mean/last) or [B, L // patch_size, K]
        (pooling none; rows past a sequence's length are padding).
        """

    def predict_frames(self, batch: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Logits after every frame end of each sequence (`model.events.frame_ends`): what a
        stream of that sequence, sent whole and then ended, would predict frame by frame (the
        input of its event detector). ``batch``/``lengths`` as in `predict`; returns one
        float32 [F_i, K] per sequence. This default steps the streaming form frame by frame
        (exact for any backend with `step`); backends with a faster batch form override it."""
        from model.events import frame_ends

        if not self.metadata.streamable:
            raise BackendError(f"model {self.metadata.name} is not streamable: no frame outputs")
        slab = self.new_slab(1)
        out = []
        t, p = self.frame_size, self.metadata.patch_size
        for row, n in zip(batch, lengths, strict=True):
            slab_state = slab.gather([0], pad_to=1)
            rows, start = [], 0
            for end in frame_ends(int(n), t, p):
                logits, slab_state = self.step(row[None, start:end], slab_state)
                logits = np.asarray(logits)[0]
                rows.append(logits[-1] if logits.ndim == 2 else logits)
                start = end
            out.append(np.asarray(rows, np.float32).reshape(len(rows), -1))
        return out

    @abstractmethod
    def new_slab(self, max_sessions: int) -> SlabStorage:
        """Allocate zeroed streaming state for ``max_sessions`` sessions on the device.

        Raises ``BackendError`` if the model is not streamable.
        """

    @abstractmethod
    def step(self, frames: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One streaming step for a batch of sessions.

        ``frames`` float32 [B, T', C] with T' <= frame_size and a multiple of patch_size
        (T' < frame_size: a partial last frame). ``state`` comes from ``SlabStorage.gather``
        (B rows). Returns float32 logits [B, K] (prediction for everything streamed so far) or
        [B, T' // patch_size, K] for pooling none, and the new state (same layout).
        """

    #: pad stream batches to the planner's bucket sizes (fixed shapes for captured graphs);
    #: on a CPU padding rows are pure extra work, so backends that gain nothing leave it off
    pads_batches: bool = False
    #: the largest batch a step runs on its fast path (captured graphs); the engine splits a
    #: larger round into balanced steps below it (None: any batch)
    max_step_batch: int | None = None

    def step_slots(self, storage: SlabStorage, slots: Sequence[int],
                   frames: np.ndarray) -> np.ndarray:
        """One streaming step for the sessions in slab rows ``slots``, state read and written
        in place. ``frames`` [B, T', C] with B >= len(slots) (rows past them are padding).
        Returns the logits of the ``len(slots)`` sessions (layout as ``step``)."""
        state = storage.gather(slots, pad_to=len(frames))
        logits, new_state = self.step(frames, state)
        storage.scatter(slots, new_state)
        return np.asarray(logits)[: len(slots)]

    def prepare_streaming(self, storage: SlabStorage, batch_sizes: Sequence[int]) -> None:  # noqa: B027
        """Build what steps of these batch sizes need (CUDA graphs) before the first stream."""

    def warmup(self, batch_sizes: Sequence[int] = (1, 2)) -> None:
        """Run each path once so that the first request does not pay for lazy init."""
        c = self.metadata.input_channels
        t = self.frame_size
        self.predict(np.zeros((1, 2 * t, c), np.float32), np.array([2 * t], np.int64))
        if self.metadata.streamable:
            slab = self.new_slab(1)
            for b in batch_sizes:
                state = slab.gather([0], pad_to=b)
                self.step(np.zeros((b, t, c), np.float32), state)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources."""


_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    _BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str) -> type[Backend]:
    """Backend class by name ("torch", "onnxruntime"), importing its module on demand."""
    if name not in _BACKENDS:
        import importlib

        module = {"torch": "server.backends.torch_backend", "onnxruntime": "server.backends.onnx_backend"}
        if name not in module:
            raise BackendError(f"unknown backend {name!r}; known: {sorted(module)}")
        try:
            importlib.import_module(module[name])
        except ImportError as exc:
            raise BackendError(f"backend {name!r} is unavailable: {exc}") from exc
    return _BACKENDS[name]
