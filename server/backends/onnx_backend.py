"""ONNX Runtime backend: both paths run through `onnxruntime.InferenceSession`.

Graphs (model/export.py): ``step.onnx`` (frame step, dynamic batch and frame length, so a
partial last frame is exact on the same graph) and ``batch.onnx`` (FFT convolution with the
kernel precomputed up to ``max_steps``; longer sequences are run through the step graph frame
by frame, which is the same recurrence).

Where the graphs come from, at load:
1. ``CHECKPOINT/onnx/`` (what ``s4d export onnx CHECKPOINT`` writes by default), if present:
   operator-provided, so a missing/corrupt/mismatched file is a ``BackendError`` naming it;
2. otherwise the cache, ``$S4D_ONNX_CACHE`` (default ``~/.cache/s4d-serve/onnx``), keyed by the
   checkpoint's sha256, frame size and export format: exported on first load (under a file
   lock); a cache entry that fails verification is exported again.

Provider: ``CUDAExecutionProvider`` when the device is not "cpu", onnxruntime-gpu is installed
and the provider actually initialises; otherwise ``CPUExecutionProvider``.

Where the streaming state lives (``S4D_ONNX_DEVICE_STATE``): host NumPy arrays
(``NumpySlabStorage``, fed through ``session.run``: on CUDA every step copies the whole state
host -> device -> host), or device-resident torch tensors (``TorchSlabStorage`` on the
provider's device) bound to the step graph's inputs and outputs with IOBinding, so a step
moves only the frames in and the logits out. Default: device-resident with CUDA, host arrays
on the CPU; both are the same graph and give the same numbers.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import numpy as np

from model.state import STATE_NAMES, state_row_shapes
from server.backends.base import Backend, BackendError, ModelMetadata, State, register_backend
from server.slab import NumpySlabStorage

log = logging.getLogger("s4d.backend.onnxruntime")

PRE_EXPORTED_DIR = "onnx"


def cache_root() -> Path:
    from server.settings import Settings

    configured = Settings().onnx_cache  # S4D_ONNX_CACHE, through Settings' validation
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "s4d-serve" / "onnx"


def choose_providers(device: str, *, tf32: bool = False, torch_stream: bool = False) -> list:
    """CUDA else CPU. TF32 off unless asked for (``--precision tf32``: its 10-bit mantissa
    breaks float32 exactness); `torch_stream`: run on torch's current CUDA stream (the
    device-resident state path hands torch tensors to the graph)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        # the engine's own GPU: without device_id every session runs on GPU 0
        index = device.partition(":")[2]
        options = {"use_tf32": "1" if tf32 else "0", "device_id": index if index.isdigit() else "0"}
        if torch_stream:
            import torch

            options["user_compute_stream"] = str(torch.cuda.current_stream().cuda_stream)
            options["has_user_compute_stream"] = "1"
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    if device == "cuda":
        log.warning("device=cuda but onnxruntime has no CUDAExecutionProvider (available: %s); "
                    "install onnxruntime-gpu. Using the CPU.", available)
    return ["CPUExecutionProvider"]


def _dims(value_info) -> list:
    return [d if isinstance(d, int) else None for d in value_info.shape]


@register_backend
class OnnxBackend(Backend):
    name = "onnxruntime"

    def __init__(self, step_session, batch_session, info, config, metadata: ModelMetadata,
                 device_state: bool = False):
        self.step_session = step_session
        #: state as torch tensors on the provider's device, bound with IOBinding (else NumPy)
        self.device_state = bool(device_state and step_session is not None)
        self._bound = None
        if self.device_state:
            from server.backends.ort_binding import BoundStep

            self._bound = BoundStep(step_session, config.model, metadata.device)
        self.batch_session = batch_session
        self.info = info
        self.config = config
        self.metadata = metadata
        self.max_steps = int(info.max_steps)
        self._state_shapes = None
        if step_session is not None:
            self._state_shapes = state_row_shapes(config.model)

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, checkpoint_dir: Path, device: str, *, name: str | None = None) -> OnnxBackend:
        from model.checkpoint import CheckpointError, load_config
        from model.export import ExportError, read_manifest

        checkpoint_dir = Path(checkpoint_dir)
        try:
            config = load_config(checkpoint_dir)
        except CheckpointError as exc:
            raise BackendError(str(exc)) from exc
        pre = checkpoint_dir / PRE_EXPORTED_DIR
        if pre.is_dir():
            try:
                info = read_manifest(pre, checkpoint_dir)
            except (ExportError, OSError) as exc:
                raise BackendError(f"pre-exported ONNX graphs: {exc}") from exc
            source = "pre-exported"
        else:
            info = cls._cached_export(checkpoint_dir, int(config.task.frame_size))
            source = "cache"
        log.info("model %s: ONNX graphs from %s (%s)", name or checkpoint_dir.name, info.directory, source)
        return cls.from_export(info, config, device, name=name or checkpoint_dir.name)

    @staticmethod
    def _cached_export(checkpoint_dir: Path, frame_size: int):
        from model.checkpoint import CheckpointError
        from model.export import (
            DEFAULT_MAX_STEPS,
            EXPORT_FORMAT,
            ExportError,
            checkpoint_digest,
            export_checkpoint,
            read_manifest,
        )

        try:
            digest = checkpoint_digest(checkpoint_dir)
        except OSError as exc:
            raise BackendError(f"{checkpoint_dir}: unreadable checkpoint ({exc})") from exc
        tag = EXPORT_FORMAT.replace("/", "-")
        out = cache_root() / f"{digest[:24]}-f{frame_size}-m{DEFAULT_MAX_STEPS}-{tag}"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f".{out.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if out.is_dir():
                try:
                    return read_manifest(out, checkpoint_dir, frame_size=frame_size)
                except ExportError as exc:
                    log.warning("ONNX cache entry %s is invalid (%s): exporting again", out, exc)
            log.info("exporting %s to ONNX (%s)", checkpoint_dir, out)
            try:
                return export_checkpoint(checkpoint_dir, out, frame_size=frame_size)
            except (CheckpointError, ExportError) as exc:
                raise BackendError(str(exc)) from exc

    @classmethod
    def from_export(cls, info, config, device: str, *, name: str) -> OnnxBackend:
        """Sessions over an export folder (``model.export.ExportInfo``), checked against config."""
        import onnxruntime as ort

        from server.settings import Settings

        settings = Settings()
        wanted = settings.onnx_device_state
        providers = choose_providers(device, tf32=settings.precision == "tf32",
                                     torch_stream=device != "cpu" and wanted is not False)

        def session(path: Path):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            threads = settings.onnx_threads  # S4D_ONNX_THREADS (default: compute_threads)
            if threads:
                opts.intra_op_num_threads = threads
            try:
                return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as exc:  # onnxruntime raises its own types for a bad protobuf
                raise BackendError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc

        m = config.model
        step = session(info.step_path) if info.streamable else None
        batch = session(info.batch_path)
        cls._check_signature(batch, info.batch_path, {
            "x": [None, None, m.d_input], "lengths": [None]}, m)
        if step is not None:
            state = {k: [None, *v] for k, v in state_row_shapes(m).items()}
            cls._check_signature(step, info.step_path, {
                "frames": [None, None, m.d_input], **state}, m)
        used = (step or batch).get_providers()
        dev = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        device_state = dev == "cuda" if wanted is None else wanted
        meta = ModelMetadata.from_checkpoint(
            name, config, frame_size=int(info.frame_size), streamable=step is not None,
            parameters=int(info.manifest.get("parameters", 0)), backend=cls.name, device=dev,
            extra={"onnx_dir": str(info.directory), "providers": used,
                   "device_state": bool(device_state and step is not None),
                   "max_batch_samples": int(info.max_steps) * int(m.patch_size)},
        )
        return cls(step, batch, info, config, meta, device_state=device_state)

    @staticmethod
    def _check_signature(sess, path: Path, expected: dict[str, list], mcfg) -> None:
        got = {i.name: _dims(i) for i in sess.get_inputs()}
        if set(got) != set(expected):
            raise BackendError(f"{path}: graph inputs {sorted(got)} do not match the expected "
                               f"{sorted(expected)} (not an s4d export of this format)")
        for k, dims in expected.items():
            if len(got[k]) != len(dims) or any(e is not None and g != e for g, e in zip(got[k], dims)):
                raise BackendError(
                    f"{path}: input {k!r} has shape {got[k]}, config.json implies {dims} "
                    f"(d_input={mcfg.d_input}, n_layers={mcfg.n_layers}, d_model={mcfg.d_model}, "
                    f"d_state={mcfg.d_state}): the graph belongs to another model; re-export it")
        for o in sess.get_outputs()[:1]:
            last = o.shape[-1] if o.shape else None
            if isinstance(last, int) and last != mcfg.d_output:
                raise BackendError(f"{path}: output {o.name!r} has {last} classes, config.json "
                                   f"has d_output={mcfg.d_output}: re-export it")

    # ---- paths --------------------------------------------------------------------------------
    def predict(self, batch: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        lengths = np.asarray(lengths, dtype=np.int64)
        p = self.metadata.patch_size
        if np.any(lengths < p):
            raise ValueError(f"every sequence needs at least patch_size={p} samples")
        steps = x.shape[1] // p
        x = x[:, : steps * p]
        if steps <= self.max_steps:
            return self._predict_batch_graph(x, lengths, steps)
        if self.step_session is None:
            raise ValueError(
                f"sequences longer than {self.max_steps * p} samples need the streaming graph, "
                "which a bidirectional model has not; re-export with a larger --max-length")
        return self._predict_by_frames(x, lengths)

    def _predict_batch_graph(self, x: np.ndarray, lengths: np.ndarray, steps: int) -> np.ndarray:
        """The batch graph on the batch zero-padded to a power-of-two number of steps (at most
        max_steps): the graph's FFTs are 2L long and ONNX Runtime's DFT is fast only at powers
        of two (ecg-s4d, 12,800 steps: 9.6 s as is, 1.9 s padded to 16,384 on two CPU cores).
        Exact: the convolution is causal and `lengths` mask the padding out of the pooling."""
        padded = min(self.max_steps, 1 << (steps - 1).bit_length())
        if padded > steps:
            p = self.metadata.patch_size
            x = np.concatenate([x, np.zeros((x.shape[0], (padded - steps) * p, x.shape[2]),
                                            np.float32)], axis=1)
        out = self.batch_session.run(None, {"x": x, "lengths": lengths})[0]
        return out[:, :steps] if out.ndim == 3 else out  # pooling none: one row per step

    def _predict_by_frames(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The batch result through the step graph, frame by frame (any length, exact)."""
        p, t = self.metadata.patch_size, self.frame_size
        b = x.shape[0]
        usable = (np.minimum(lengths, x.shape[1]) // p) * p
        state = {k: np.zeros((b, *s), np.float32) for k, s in self._state_shapes.items()}
        k = int(self.config.model.d_output)
        per_step = self.metadata.pooling == "none"
        out = np.zeros((b, x.shape[1] // p, k) if per_step else (b, k), np.float32)
        pos = 0
        while pos < usable.max():
            chunk = np.minimum(usable - pos, t)
            for n in np.unique(chunk[chunk > 0]):
                rows = np.nonzero(chunk == n)[0]
                sub = {name: a[rows] for name, a in state.items()}
                logits, new = self._step_host(x[rows, pos : pos + n], sub)
                for name in state:
                    state[name][rows] = new[name]
                if per_step:
                    out[rows, pos // p : (pos + n) // p] = logits
                else:
                    out[rows] = logits  # the last chunk of a row leaves its final prediction
            pos += t
        return out

    def new_slab(self, max_sessions: int):
        if self.step_session is None:
            raise BackendError(f"model {self.metadata.name} is not streamable")
        if self._bound is not None:
            return self._bound.new_slab(max_sessions)
        template = {k: np.zeros((1, *s), np.float32) for k, s in self._state_shapes.items()}
        return NumpySlabStorage(template, max_sessions)

    def step(self, frames: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        if self.step_session is None:
            raise BackendError(f"model {self.metadata.name} is not streamable")
        if self._bound is not None:
            return self._bound(frames, state)
        return self._step_host(frames, state)

    def _step_host(self, frames: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """``session.run`` on host NumPy arrays (state copied in and out every step)."""
        feed = {"frames": np.ascontiguousarray(frames, dtype=np.float32)}
        for k in STATE_NAMES:
            feed[k] = np.ascontiguousarray(state[k], dtype=np.float32)
        logits, *new = self.step_session.run(None, feed)
        return logits, dict(zip(STATE_NAMES, new, strict=True))

    def close(self) -> None:
        self._bound = None
        self.step_session = None
        self.batch_session = None
