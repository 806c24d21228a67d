"""ONNX export of a checkpoint: the streaming frame step and the batch (whole-sequence) path.

Two graphs, both float32 with real arithmetic only (ONNX has no complex tensors), written next
to a copy of the checkpoint's config.json and a manifest (``export.json``):

``step.onnx``: inputs ``frames [B, T', d_in]``, ``x_re``/``x_im [B, L, H, M]``, ``pool [B, H]``,
``count [B, 1]``; outputs ``logits`` ([B, K], or [B, T'/p, K] for pooling none) and the new
state ``x_re_out, x_im_out, pool_out, count_out``. B and T' are dynamic: any
``T' = S'·patch_size <= frame_size`` is exact, so one graph serves full frames and the partial
last frame of an ``end``. Per layer, with u the S' inputs and x the state (``model/streaming.py``):

    y  = [u, 0…0 | Re x, Im x] @ Y          (u right-padded to S steps; keep the first S')
    x' = [0…0, u] @ W + dA^{S'} x            (u left-padded to S steps; complex product)

``Y`` [H, S+2M, S] and ``W`` [H, S, 2M] are blocks of the full-frame matrix of
``frame_matrix`` (float64, then float32): outputs t < S' never see the right padding (causal),
and the last S' rows of the input->state block are exactly dA^{S'-1-s} dB. The carry dA^{S'}
comes from a table [S+1, L, H, M] (re/im) indexed by S'. Every constant equals the one the
PyTorch partial-frame matrix holds, so a partial frame is the same computation, not an
approximation (and no per-length matrix is built at run time, nor any big constant sliced).

``batch.onnx``: inputs ``x [B, L, d_in]`` (right-padded) and ``lengths [B]`` (int64); output
``logits`` as ``S4DNetwork.forward``. The S4D convolution is an FFT convolution (ONNX ``DFT``,
opset >= 17, computed in float64: ONNX Runtime's float32 DFT at lengths that are not powers of
two drifted up to 2e-5 from a float64 forward, for 5-13 % of the batch graph's time) with the
kernel K precomputed in float64 up to ``max_steps`` steps (a constant
[L, n_kernels, H, max_steps]) and sliced to the input length, so L is dynamic up to
``max_steps * patch_size`` samples. Longer inputs go through the step graph (the ONNX Runtime
backend does so; exact as well, since the step is the same recurrence).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint
from .network import S4DNetwork, run_blocks
from .pooling import pool_sequence, valid_mask
from .s4d import mode_powers
from .state import STATE_NAMES, zero_state
from .streaming import NotStreamableError, frame_matrix, pooling_head

EXPORT_FORMAT = "s4d-onnx/2"  # 2: the batch graph convolves in float64
STEP_FILE = "step.onnx"
BATCH_FILE = "batch.onnx"
MANIFEST_FILE = "export.json"
OPSET = 18
DEFAULT_MAX_STEPS = 16384

STEP_INPUTS = ("frames", *STATE_NAMES)
STEP_OUTPUTS = ("logits", *(f"{n}_out" for n in STATE_NAMES))
BATCH_INPUTS = ("x", "lengths")
BATCH_OUTPUTS = ("logits",)


class ExportError(ValueError):
    """A checkpoint cannot be exported, or exported files are missing/corrupt/mismatched."""


def _frozen_copy(network: S4DNetwork, dtype: torch.dtype) -> S4DNetwork:
    net = copy.deepcopy(network).eval().to(device="cpu", dtype=dtype)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class StepGraph(nn.Module):
    """The frame step for any T' <= frame_size (see the module docstring), real arithmetic."""

    def __init__(self, network: S4DNetwork, frame_size: int):
        super().__init__()
        cfg = network.cfg
        if cfg.bidirectional:
            raise NotStreamableError("bidirectional networks have no streaming step graph")
        p = cfg.patch_size
        if frame_size < p or frame_size % p:
            raise ValueError(f"frame_size={frame_size} must be a positive multiple of patch_size={p}")
        self.cfg = cfg
        self.frame_size = frame_size
        self.steps = s = frame_size // p
        m = cfg.n_modes
        net64 = _frozen_copy(network, torch.float64)
        ys, ws, carry_re, carry_im = [], [], [], []
        with torch.no_grad():
            for block in net64.blocks:
                g = frame_matrix(block.s4d.kernel, s)  # [H, S+2M, S+2M]
                ys.append(g[:, :, :s])
                ws.append(g[:, :s, s:])
                _, _, log_da, _ = block.s4d.kernel.discrete(torch.float64)
                powers = mode_powers(log_da, s + 1)  # [H, M, S+1], as frame_matrix
                carry_re.append(powers.real.permute(2, 0, 1))
                carry_im.append(powers.imag.permute(2, 0, 1))
        self.register_buffer("y_mat", torch.stack(ys).float())  # [L, H, S+2M, S]
        self.register_buffer("w_mat", torch.stack(ws).float())  # [L, H, S, 2M]
        self.register_buffer("carry_re", torch.stack(carry_re, 1).float())  # [S+1, L, H, M]
        self.register_buffer("carry_im", torch.stack(carry_im, 1).float())
        self.net = _frozen_copy(network, torch.float32)
        self.m = m

    def forward(self, frames, x_re, x_im, pool, count):
        p, s, m = self.cfg.patch_size, self.steps, self.m
        steps = frames.shape[1] // p
        h = self.net.embed(frames)  # [B, S', H]
        new_re, new_im = [], []

        def core(i, block, u):
            u = u.permute(2, 0, 1)  # [H, B, S']
            xr = x_re[:, i].transpose(0, 1)  # [H, B, M]
            xi = x_im[:, i].transpose(0, 1)
            # zero padding to S steps as a concat + static-length slice (no zero-size pads:
            # T' = T stays on the same graph path)
            zeros = torch.zeros_like(u[:, :, :1]).expand(-1, -1, s)
            right = torch.cat([u, zeros], dim=-1)[..., :s]  # [u, 0...0]
            left = torch.cat([zeros, u], dim=-1)[..., steps:]  # [0...0, u]
            y = torch.bmm(torch.cat([right, xr, xi], dim=-1), self.y_mat[i])[..., :steps]
            x_in = torch.bmm(left, self.w_mat[i])  # [H, B, 2M]
            cr = self.carry_re[steps, i].unsqueeze(1)  # [H, 1, M]
            ci = self.carry_im[steps, i].unsqueeze(1)
            new_re.append((x_in[..., :m] + cr * xr - ci * xi).transpose(0, 1))
            new_im.append((x_in[..., m:] + ci * xr + cr * xi).transpose(0, 1))
            return y.permute(1, 2, 0)

        h = run_blocks(self.net.blocks, h, core)
        count = count + steps
        logits, pool = pooling_head(self.net, h, pool, count)
        return logits, torch.stack(new_re, 1), torch.stack(new_im, 1), pool, count

    def zero_state(self, batch: int) -> dict[str, torch.Tensor]:
        return zero_state(self.cfg, batch)


class BatchGraph(nn.Module):
    """``S4DNetwork.forward`` with the kernel precomputed (float64) up to ``max_steps``."""

    def __init__(self, network: S4DNetwork, max_steps: int):
        super().__init__()
        if max_steps < 1:
            raise ValueError("max_steps must be positive")
        self.cfg = network.cfg
        self.max_steps = max_steps
        net64 = _frozen_copy(network, torch.float64)
        with torch.no_grad():
            ks = [b.s4d.kernel.kernel(max_steps, torch.float64, block=128) for b in net64.blocks]
        self.register_buffer("kernels", torch.stack(ks).float())  # [L, n_k, H, max_steps]
        self.net = _frozen_copy(network, torch.float32)

    def forward(self, x, lengths):
        cfg = self.cfg
        p = cfg.patch_size
        h = self.net.embed(x)  # [B, S, H]
        steps = h.shape[1]
        n_valid = torch.div(lengths, p, rounding_mode="floor")
        mask = valid_mask(n_valid, steps, h.dtype)  # [B, S, 1]
        kernels = self.kernels
        # the FFT convolution in float64: ONNX Runtime's float32 DFT at lengths that are not
        # powers of two drifts up to ~2e-5 from a float64 forward (torch's float32 FFT: ~3e-6)
        h = run_blocks(self.net.blocks, h, lambda i, block, u: block.conv(
            u.double(), mask, kernels[i].double()).to(u.dtype))
        pooled = pool_sequence(h, n_valid, cfg)
        return self.net.decode(pooled)


# ---- export -------------------------------------------------------------------------------------
def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names,
            dynamic_shapes) -> None:
    """The dynamo exporter (torch.export + onnxscript): the one that translates torch.fft."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=OPSET, input_names=list(input_names),
            output_names=list(output_names), dynamic_shapes=dynamic_shapes,
            external_data=False, optimize=True, verbose=False,
        )
    program.save(str(path), external_data=False)


def export_step(network: S4DNetwork, frame_size: int, path: str | Path) -> Path:
    """The frame step via the TorchScript exporter: it traces this graph in well under a
    second (the dynamo exporter takes seconds for the same graph) and records the frame
    length as a dynamic dimension (the pads, slices and the carry index follow it)."""
    path = Path(path)
    graph = StepGraph(network, frame_size).eval()
    cfg = network.cfg
    example = (torch.zeros(2, frame_size, cfg.d_input), *graph.zero_state(2).values())
    dynamic_axes = {"frames": {0: "batch", 1: "frame"}}
    for name in STEP_INPUTS[1:]:
        dynamic_axes[name] = {0: "batch"}
    for name in STEP_OUTPUTS:
        dynamic_axes[name] = {0: "batch", 1: "steps"} if name == "logits" and cfg.pooling == "none" else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, example, str(path), dynamo=False, opset_version=OPSET,
            input_names=list(STEP_INPUTS), output_names=list(STEP_OUTPUTS),
            dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
    return path


def export_batch(network: S4DNetwork, max_steps: int, path: str | Path) -> Path:
    path = Path(path)
    graph = BatchGraph(network, max_steps).eval()
    cfg = network.cfg
    length = min(max_steps, 4) * cfg.patch_size
    example = (torch.zeros(2, length, cfg.d_input), torch.full((2,), length, dtype=torch.long))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    steps = torch.export.Dim("steps", min=1, max=max_steps)
    t = steps * cfg.patch_size if cfg.patch_size > 1 else steps
    _export(graph, example, path, BATCH_INPUTS, BATCH_OUTPUTS, ({0: batch, 1: t}, {0: batch}))
    return path


def checkpoint_digest(checkpoint_dir: str | Path) -> str:
    """sha256 over config.json and the weights: what an export was made from."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        h.update(name.encode())
        with open(Path(checkpoint_dir) / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ExportInfo:
    """What ``export.json`` records; ``read_manifest`` checks it against a checkpoint."""

    directory: Path
    frame_size: int
    max_steps: int
    streamable: bool
    manifest: dict

    @property
    def step_path(self) -> Path | None:
        return self.directory / STEP_FILE if self.streamable else None

    @property
    def batch_path(self) -> Path:
        return self.directory / BATCH_FILE


def export_checkpoint(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    frame_size: int | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    check: bool = True,
) -> ExportInfo:
    """Export both graphs of a checkpoint into ``out_dir`` (+ config.json, export.json).

    Files are written under a temporary name and renamed, so a concurrent reader never sees
    a half-written export. Bidirectional networks get the batch graph only.
    """
    checkpoint_dir = Path(checkpoint_dir)
    out_dir = Path(out_dir)
    network, config = load_checkpoint(checkpoint_dir, device="cpu", dtype=torch.float32)
    frame = int(frame_size or config.task.frame_size)
    p = config.model.patch_size
    if frame < p or frame % p:
        raise ExportError(f"--frame {frame} must be a positive multiple of patch_size={p}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{out_dir}.tmp-{time.time_ns()}")
    tmp.mkdir(parents=True)
    try:
        t0 = time.perf_counter()
        streamable = not config.model.bidirectional
        files = {}
        if streamable:
            export_step(network, frame, tmp / STEP_FILE)
            files[STEP_FILE] = file_digest(tmp / STEP_FILE)
        export_batch(network, max_steps, tmp / BATCH_FILE)
        files[BATCH_FILE] = file_digest(tmp / BATCH_FILE)
        if check:
            import onnx

            for name in files:
                onnx.checker.check_model(str(tmp / name), full_check=True)
        shutil.copyfile(checkpoint_dir / CONFIG_FILE, tmp / CONFIG_FILE)
        manifest = {
            "format": EXPORT_FORMAT,
            "checkpoint_sha256": checkpoint_digest(checkpoint_dir),
            "frame_size": frame,
            "patch_size": p,
            "max_steps": max_steps,
            "max_batch_samples": max_steps * p,
            "streamable": streamable,
            "parameters": int(sum(t.numel() for t in network.parameters())),
            "opset": OPSET,
            "torch": torch.__version__,
            "files": files,
            "step": {"inputs": list(STEP_INPUTS), "outputs": list(STEP_OUTPUTS)} if streamable else None,
            "batch": {"inputs": list(BATCH_INPUTS), "outputs": list(BATCH_OUTPUTS)},
            "export_seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        for f in tmp.iterdir():
            f.replace(out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_manifest(out_dir, checkpoint_dir, frame_size=frame)


def read_manifest(
    export_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    *,
    frame_size: int | None = None,
    verify_files: bool = True,
) -> ExportInfo:
    """Validate an export folder (and, given ``checkpoint_dir``, that it was made from it).

    Raises ``ExportError`` with a clear message: missing/corrupt manifest, wrong format,
    another checkpoint's export, another frame size, or a graph file whose sha256 differs.
    """
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST_FILE
    if not path.is_file():
        raise ExportError(f"{path}: missing (not an s4d ONNX export folder)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{path}: format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {EXPORT_FORMAT!r}")
    if checkpoint_dir is not None:
        digest = checkpoint_digest(checkpoint_dir)
        if manifest.get("checkpoint_sha256") != digest:
            raise ExportError(
                f"{export_dir}: exported from another checkpoint (sha256 "
                f"{str(manifest.get('checkpoint_sha256'))[:12]}…), not {checkpoint_dir} "
                f"({digest[:12]}…); re-export it with `s4d export onnx {checkpoint_dir}`"
            )
    if frame_size is not None and manifest.get("frame_size") != frame_size:
        raise ExportError(
            f"{export_dir}: exported for frame_size={manifest.get('frame_size')}, "
            f"the server needs {frame_size}"
        )
    files = manifest.get("files") or {}
    for name in ([STEP_FILE] if manifest.get("streamable") else []) + [BATCH_FILE]:
        f = export_dir / name
        if not f.is_file():
            raise ExportError(f"{f}: missing")
        if verify_files and file_digest(f) != files.get(name):
            raise ExportError(f"{f}: sha256 differs from {MANIFEST_FILE} (corrupted or replaced)")
    return ExportInfo(export_dir, int(manifest["frame_size"]), int(manifest["max_steps"]),
                      bool(manifest["streamable"]), manifest)


def rel_error(a, b) -> float:
    """max |a - b| / max |b| (the tolerance measure used to compare engines)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def verify_export(info: ExportInfo, checkpoint_dir: str | Path, *, batch: int = 3,
                  n_frames: int = 4, seed: int = 0) -> dict[str, float]:
    """ONNX Runtime (CPU) vs PyTorch on random inputs: relative error per path.

    Streams ``n_frames`` full frames and one partial frame with carried state (logits and
    every state tensor compared after each), and a batch of unequal lengths.
    """
    import numpy as np
    import onnxruntime as ort

    from .streaming import StreamingNetwork

    network, config = load_checkpoint(checkpoint_dir, device="cpu", dtype=torch.float32)
    cfg = config.model
    gen = torch.Generator().manual_seed(seed)
    cpu = ["CPUExecutionProvider"]
    out: dict[str, float] = {}
    p, t = cfg.patch_size, info.frame_size
    length = min(3 * t, info.max_steps * p)
    x = torch.randn(batch, length, cfg.d_input, generator=gen)
    lengths = torch.tensor([max(p, length - 7 * i) for i in range(batch)])
    sess = ort.InferenceSession(str(info.batch_path), providers=cpu)
    with torch.no_grad():
        ref = network(x, lengths).numpy()
    got = sess.run(None, {"x": x[:, : (length // p) * p].numpy(), "lengths": lengths.numpy()})[0]
    if cfg.pooling == "none":  # rows past a sequence's length are padding
        mask = np.arange(ref.shape[1])[None, :] < (lengths.numpy() // p)[:, None]
        ref, got = ref * mask[..., None], got * mask[..., None]
    out["batch"] = rel_error(got, ref)
    if info.streamable:
        stream = StreamingNetwork(network, t)
        sess = ort.InferenceSession(str(info.step_path), providers=cpu)
        state_t = stream.zero_state(batch)
        state_o = {k: v.numpy() for k, v in state_t.items()}
        worst = 0.0
        partial = max(p, t - p) if t > p else p
        for n in [t] * n_frames + [partial]:
            frames = torch.randn(batch, n, cfg.d_input, generator=gen)
            with torch.no_grad():
                logits_t, state_t = stream.step(frames, state_t)
            logits_o, *new = sess.run(None, {"frames": frames.numpy(), **state_o})
            state_o = dict(zip(STATE_NAMES, new, strict=True))
            worst = max(worst, rel_error(logits_o, logits_t.numpy()),
                        *(rel_error(state_o[k], state_t[k].numpy()) for k in STATE_NAMES))
        out["step"] = worst
    return out
