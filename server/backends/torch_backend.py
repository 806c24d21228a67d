"""PyTorch backend: `S4DNetwork` (FFT convolution) for batches, `StreamingNetwork` for streams.

Everything runs under `torch.inference_mode()`: the state slab is updated in place, and under
autograd every frame would be chained into one ever-growing graph.

Precision (`S4D_PRECISION`, `--precision`): fp32 (default, exact) | tf32 | bf16 for both
paths (model/precision.py); the streaming state is float32 in every mode. `--compile-step`
fuses the streaming step with torch.compile before the CUDA graphs capture it; `--compile-batch`
fuses the REST forwards (`S4DNetwork.compiled_features`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from model.precision import matmul_precision
from model.s4d import fft_size
from server.backends.base import Backend, BackendError, ModelMetadata, State, register_backend
from server.slab import TorchSlabStorage

log = logging.getLogger("s4d.backend.torch")


#: largest relative difference of a compiled step from the plain one accepted at load, per
#: precision (fp32: float32 reassociation; tf32 / bf16: their operand rounding, measured)
COMPILED_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 5e-2}


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of `want`."""
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-30))


def check_fused_core(streaming, name: str) -> bool:
    """Keep the Triton core (model/fused_core.py) only if its first steps run and match the
    GEMM form: a missing compiler or a kernel that fails shows at load, and the GEMM form
    serves instead of failing mid-stream."""
    if not streaming.fused_core:
        return False
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.inference_mode():
            frames = torch.randn((3, streaming.frame_size, streaming.cfg.d_input),
                                 generator=gen).to(streaming.device) * 0.1
            state = {k: (torch.randn(v.shape, generator=gen) * 0.1).to(v.device)
                     for k, v in streaming.zero_state(3).items()}
            got, _ = streaming.step(frames, state)
            streaming.fused_core = False
            want, _ = streaming.step(frames, state)
            diff = rel_diff(got, want)
            if not diff <= COMPILED_TOLERANCE["fp32"]:
                raise ValueError(f"the fused core differs from the GEMM form by {diff:.1e}")
            streaming.fused_core = True
    except Exception:  # noqa: BLE001 - no Triton compiler, a failing kernel: the GEMM form
        log.exception("model %s: the fused Triton core failed its check; serving the GEMM "
                      "form", name)
        streaming.fused_core = False
        return False
    return True


def compile_streaming(streaming, name: str) -> bool:
    """`StreamingNetwork.compile()` and a first step at two batch sizes, checked against the
    plain step: a compiler failure or a wrong kernel shows at load (and the plain step serves)
    rather than in the middle of a stream."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.inference_mode():
            probes = []
            for batch in (1, 2):  # the second size makes the batch dimension dynamic
                frames = torch.randn((batch, streaming.frame_size, streaming.cfg.d_input),
                                     generator=gen).to(streaming.device) * 0.1
                probes.append((frames, streaming.step(frames, streaming.zero_state(batch))[0]))
            streaming.compile()
            for frames, want in probes:
                got, _ = streaming.step(frames, streaming.zero_state(len(frames)))
                diff = rel_diff(got, want)
                if not diff <= COMPILED_TOLERANCE[streaming.precision]:
                    raise ValueError(f"compiled step differs from the plain one by {diff:.1e}")
    except Exception:  # noqa: BLE001 - no compiler, an unsupported op: serve uncompiled
        log.exception("model %s: compiling the streaming step failed; serving it uncompiled",
                      name)
        streaming.uncompile()
        return False
    log.info("model %s: streaming step compiled in %.1f s", name, time.perf_counter() - t0)
    return True


#: REST steps padded to a multiple of this for the compiled forward: Triton specialises a
#: kernel on whether each size argument divides by 16 and compiles a variant on first use (a
#: first request of a new length took seconds on an H200); whole multiples keep one variant
COMPILED_STEP_MULTIPLE = 16


def compiled_steps(steps: int) -> int:
    """The padded step count the compiled forward runs: a multiple of 16 whose 2x is a
    smooth FFT length (the symbolic graph's FFT is 2L, `causal_conv`)."""
    m = COMPILED_STEP_MULTIPLE
    return m * fft_size(-(-steps // m))


def compile_batch(backend, name: str) -> bool:
    """`S4DNetwork.compiled_features` for the REST forwards, run at load and checked against
    the plain forward: a compiler failure or a wrong kernel shows here, and the plain forward
    serves. Batch 1 (a graph apart: size-1 specialisation), 2 and 16 (a dynamic batch that
    does and does not divide by 16) compile every kernel variant a request can need."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    net, patch = backend.network, backend.metadata.patch_size
    kept = backend.kernels[0].shape[-1]
    if kept < 2 * COMPILED_STEP_MULTIPLE:
        log.info("model %s: batch forward not compiled: kept kernels of %d steps", name, kept)
        return False
    try:
        with torch.inference_mode(), matmul_precision(backend.precision, backend.device):
            backend.compiled_features = net.compiled_features()
            for batch in (1, 2, 16):
                steps = COMPILED_STEP_MULTIPLE + 1  # padded to 32
                x = torch.randn((batch, steps * patch, net.cfg.d_input),
                                generator=gen).to(backend.device) * 0.1
                n = torch.full((batch,), steps * patch, dtype=torch.long, device=backend.device)
                got = net.head(backend.batch_features(x, n), n)
                want = net(x, n, kernels=backend.kernels)
                diff = rel_diff(got, want)
                if not diff <= COMPILED_TOLERANCE[backend.precision]:
                    raise ValueError(f"compiled forward differs from the plain one by {diff:.1e}")
    except Exception:  # noqa: BLE001 - no compiler, an unsupported op: serve uncompiled
        log.exception("model %s: compiling the batch forward failed; serving it uncompiled", name)
        backend.compiled_features = None
        return False
    log.info("model %s: batch forward compiled in %.1f s", name, time.perf_counter() - t0)
    return True


#: longest batch kernel kept per model (steps); longer forwards compute theirs
MAX_KERNEL_STEPS = 1 << 16


def batch_kernel_steps(settings, patch_size: int) -> int:
    """Steps of the kernels kept for REST forwards: the longest sequence the batcher runs as
    one FFT forward (longer ones go through the recurrence in chunks), capped."""
    samples = settings.predict_chunk_samples or settings.max_sequence_samples
    return max(1, min(MAX_KERNEL_STEPS, samples // patch_size))


@register_backend
class TorchBackend(Backend):
    name = "torch"

    #: the S4D kernels of the REST forwards, computed once at load (`S4DNetwork.kernels`)
    kernels: list | None = None

    #: `S4DNetwork.compiled_features` when `--compile-batch` compiled it at load
    compiled_features = None

    #: capture CUDA graphs of the streaming step (set False to compare with eager steps)
    cuda_graphs = True

    def __init__(self, network, streaming, config, metadata: ModelMetadata, device: torch.device,
                 precision: str = "fp32"):
        self.precision = precision
        self.network = network
        self.streaming = streaming
        self.config = config
        self.metadata = metadata
        self.device = device
        self.graphs = None
        if streaming is not None and device.type == "cuda" and self.cuda_graphs:
            from server.backends.cuda_graphs import GraphCache

            self.graphs = GraphCache(streaming, metadata.input_channels)
            self.pads_batches = True  # captured graphs have fixed batch sizes
            self.max_step_batch = self.graphs.max_batch  # above it a step would run eagerly

    @classmethod
    def load(cls, checkpoint_dir: Path, device: str, *, name: str | None = None) -> TorchBackend:
        from model.checkpoint import load_checkpoint
        from model.streaming import NotStreamableError, StreamingNetwork
        from server.settings import Settings

        settings = Settings()  # S4D_* (the CLI exports its flags for the backends)
        precision = settings.precision
        checkpoint_dir = Path(checkpoint_dir)
        dev = torch.device(device)
        network, config = load_checkpoint(checkpoint_dir, device=str(dev), dtype=torch.float32)
        for p in network.parameters():
            p.requires_grad_(False)
        frame_size = int(config.task.frame_size)
        streaming = None
        try:
            streaming = StreamingNetwork(network, frame_size, dtype=torch.float32, device=dev,
                                         precision=precision,
                                         fused_core=None if settings.fused_core else False)
            streaming.eval()
            check_fused_core(streaming, name or checkpoint_dir.name)
            if settings.compile_step:
                compile_streaming(streaming, name or checkpoint_dir.name)
        except NotStreamableError as exc:
            log.info("model %s is batch-only: %s", name or checkpoint_dir.name, exc)
        except ValueError as exc:
            raise BackendError(f"{checkpoint_dir}: cannot build the streaming network: {exc}") from exc
        meta = ModelMetadata.from_checkpoint(
            name or checkpoint_dir.name, config, frame_size=frame_size,
            streamable=streaming is not None,
            parameters=sum(p.numel() for p in network.parameters()),
            backend=cls.name, device=str(dev),
            extra={"precision": precision,
                   "compiled_step": bool(streaming is not None and streaming.compiled),
                   "fused_core": bool(streaming is not None and streaming.fused_core)},
        )
        backend = cls(network, streaming, config, meta, dev, precision)
        kept = batch_kernel_steps(settings, meta.patch_size)
        # compiled: the longest one-FFT sequence padded as the compiled forward pads it, and
        # one step more: a graph traced with kernels longer than its input is guarded on it,
        # and one of exactly the kernels' length would compile again
        backend.kernels = network.kernels(
            compiled_steps(kept) + 1 if settings.compile_batch else kept)
        if settings.compile_batch:
            compile_batch(backend, name or checkpoint_dir.name)
        meta.extra["compiled_batch"] = backend.compiled_features is not None
        return backend

    def batch_features(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Per-step features of a REST batch (`S4DNetwork.features` with the kept kernels):
        compiled where they serve its length, the steps zero-padded (`compiled_steps`;
        causal, so padding at the end changes no real step) and cut back; else the plain
        forward."""
        patch = self.metadata.patch_size
        steps = x.shape[1] // patch
        padded = compiled_steps(steps) if steps > 1 else 0
        if self.compiled_features is None or not 0 < padded < self.kernels[0].shape[-1]:
            return self.network.features(x, n, kernels=self.kernels)
        # a fresh tensor: the graph is guarded on the input's strides too, and a view (batch
        # 1's leading stride can be anything) would compile a graph of its own
        padded_x = x.new_zeros((x.shape[0], padded * patch, x.shape[2]))
        padded_x[:, : steps * patch] = x[:, : steps * patch]
        return self.compiled_features(padded_x, n, kernels=self.kernels)[:, :steps]

    def predict(self, batch: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            n = torch.from_numpy(np.asarray(lengths, dtype=np.int64)).to(self.device)
            with matmul_precision(self.precision, self.device):
                logits = self.network.head(self.batch_features(x, n), n)
            return logits.float().cpu().numpy()

    def predict_frames(self, batch: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """The prediction after every prefix (`S4DNetwork.prefix_logits`, one FFT forward),
        taken at each sequence's frame ends."""
        from model.events import frame_ends

        p, t = self.metadata.patch_size, self.frame_size
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            n = torch.from_numpy(np.asarray(lengths, dtype=np.int64)).to(self.device)
            with matmul_precision(self.precision, self.device):  # as the stream's steps
                steps = self.network.prefix_head(self.batch_features(x, n))
            steps = steps.float().cpu().numpy()
        out = []
        for row, length in zip(steps, lengths, strict=True):
            idx = [e // p - 1 for e in frame_ends(int(length), t, p)]
            out.append(np.ascontiguousarray(row[idx], dtype=np.float32))
        return out

    #: samples per chunk of a long batch sequence (set by the engine from Settings)
    chunk_samples = 0

    def predict_chunked(self, seq: np.ndarray, state):
        """One chunk [L', C] of a long sequence through the recurrent form with a long frame:
        (logits [K] or [L' // patch, K], state). `state` None starts the sequence."""
        if self.streaming is None:
            raise BackendError(f"model {self.metadata.name} is not streamable")
        patch = self.metadata.patch_size
        usable = len(seq) - len(seq) % patch
        if not usable:
            return None, state
        from model.streaming import StreamingNetwork

        with torch.inference_mode():
            long = getattr(self, "_long", None)
            if long is None or long.frame_size < usable:
                frame = max(usable, self.chunk_samples) // patch * patch
                long = self._long = StreamingNetwork(self.network, frame, dtype=torch.float32,
                                                     device=self.device,
                                                     precision=self.precision).eval()
            if state is None:
                state = long.zero_state(1)
            x = torch.from_numpy(np.ascontiguousarray(seq[:usable], np.float32)[None])
            logits, state = long.step(x.to(self.device), state)
            return logits[0].float().cpu().numpy(), state

    def new_slab(self, max_sessions: int) -> TorchSlabStorage:
        if self.streaming is None:
            raise BackendError(f"model {self.metadata.name} is not streamable")
        with torch.inference_mode():
            template = self.streaming.zero_state(1)
        return TorchSlabStorage(template, max_sessions, device=self.device)

    def prepare_streaming(self, storage, batch_sizes) -> None:
        """Capture the graphs of every batch bucket now: captured lazily, each new size cost
        its first step a capture while the others waited (py-spy on a GPU engine)."""
        if self.graphs is None:
            return
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batch_sizes:
                self.graphs.slab_step(storage, b, self.frame_size)
        log.info("model %s: %d CUDA graphs captured in %.1f s", self.metadata.name,
                 len(self.graphs.slab_graphs), time.perf_counter() - t0)

    def step_slots(self, storage, slots, frames: np.ndarray) -> np.ndarray:
        """A full frame on CUDA runs gather, step and scatter as one graph replay
        (`SlabGraphedStep`); anything else the generic gather / step / scatter."""
        if self.graphs is not None and isinstance(storage, TorchSlabStorage):
            graphed = self.graphs.slab_step(storage, len(frames), frames.shape[1])
            if graphed is not None:
                with torch.inference_mode():
                    return graphed(slots, frames)
        return super().step_slots(storage, slots, frames)

    def step(self, frames: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        if self.streaming is None:
            raise BackendError(f"model {self.metadata.name} is not streamable")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(self.device)
            graphed = self.graphs.get(*x.shape[:2]) if self.graphs is not None else None
            step = graphed or self.streaming.step
            logits, new_state = step(x, state)
            return logits.float().cpu().numpy(), new_state
