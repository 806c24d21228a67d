"""Checks of the compiled streaming step, run by tests/test_compiled_step.py in a process of
their own: once torch.compile has run, Python 3.11.7's `ast.parse` can fail with "AST
constructor recursion depth mismatch" (a CPython bug), which broke the ONNX exporter's
onnxscript in later tests of the same pytest process.

    python tests/compiled_step_check.py chunking FRAME BLOCK PATCH
    python tests/compiled_step_check.py backend CHECKPOINT_DIR
    python tests/compiled_step_check.py batch CHECKPOINT_DIR...   (`--compile-batch`)
Exits 0 when every check holds; prints what differed otherwise."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from model.config import ModelConfig
from model.network import S4DNetwork
from model.streaming import StreamingNetwork


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def streamed(sn: StreamingNetwork, x: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """Logits after x sent in pieces split at `cuts`, each piece as frames + a partial one."""
    state, logits = sn.zero_state(x.shape[0]), None
    bounds = [0, *cuts, x.shape[1]]
    with torch.inference_mode():
        for a, b in zip(bounds, bounds[1:], strict=False):
            for s in range(a, b, sn.frame_size):
                logits, state = sn.step(x[:, s : min(b, s + sn.frame_size)], state)
    return logits


def check_chunking(frame: int, block: int, patch: int) -> list[str]:
    cfg = ModelConfig(d_input=2 if patch == 1 else 1, d_model=8 + 4 * (patch > 1), d_state=8,
                      n_layers=2, d_output=3, pooling="mean", patch_size=patch)
    net = S4DNetwork(cfg, seed=5).eval()
    net64 = S4DNetwork(cfg, seed=5).double().eval()
    plain = StreamingNetwork(net, frame, block_size=block)
    fused = StreamingNetwork(net, frame, block_size=block).compile()
    bad = [] if fused.compiled and not plain.compiled else ["compiled flags"]
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 3, 6):  # batch 1 is compiled apart (size-1 specialisation), then dynamic
        x = torch.randn(batch, 100, cfg.d_input, generator=gen)
        with torch.inference_mode():
            ref = net64(x.double())
        for cuts in ([], [37, 70], [5, 16, 21]):
            cuts = [c // patch * patch for c in cuts]  # pieces of whole patches
            got, want = streamed(fused, x, cuts), streamed(plain, x, cuts)
            if not rel(got, want) <= 1e-5 or not rel(got, ref) <= 1e-5:
                bad.append(f"batch {batch} cuts {cuts}: vs plain {rel(got, want):.1e}, "
                           f"vs float64 {rel(got, ref):.1e}")
    return bad


def check_backend(checkpoint_dir: str) -> list[str]:
    from server.backends.torch_backend import TorchBackend

    os.environ["S4D_COMPILE_STEP"] = "true"
    fused = TorchBackend.load(checkpoint_dir, "cpu")
    os.environ["S4D_COMPILE_STEP"] = "false"
    plain = TorchBackend.load(checkpoint_dir, "cpu")
    bad = []
    if fused.metadata.extra["compiled_step"] is not True:
        bad.append(f"compiled_step of the compiled backend: {fused.metadata.extra}")
    if plain.metadata.extra["compiled_step"] is not False:
        bad.append(f"compiled_step of the plain backend: {plain.metadata.extra}")
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((4, fused.frame_size, fused.metadata.input_channels))
    got, _ = fused.step(frames.astype(np.float32), fused.streaming.zero_state(4))
    want, _ = plain.step(frames.astype(np.float32), plain.streaming.zero_state(4))
    if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
        bad.append(f"logits differ by {np.abs(got - want).max():.1e}")
    return bad


def check_batch(checkpoint_dir: str) -> list[str]:
    """`--compile-batch`: REST forwards (`predict`, `predict_frames`) of the compiled backend
    equal the plain backend's and the float64 forward for batch 1 and mixed batches, odd
    lengths (padded to smooth step counts inside), lengths that are no whole number of
    patches, and lengths past the kept kernels (served by the plain forward)."""
    from torch._dynamo.utils import counters

    from model.checkpoint import load_checkpoint
    from server.backends.torch_backend import TorchBackend

    device = os.environ.get("S4D_CHECK_DEVICE", "cpu")  # cuda: the same checks on a GPU
    os.environ["S4D_PREDICT_CHUNK_SAMPLES"] = "256"  # kept kernels: 256 samples / patch
    os.environ["S4D_COMPILE_BATCH"] = "true"
    fused = TorchBackend.load(checkpoint_dir, device)
    graphs_at_load = counters["stats"]["unique_graphs"]
    os.environ["S4D_COMPILE_BATCH"] = "false"
    plain = TorchBackend.load(checkpoint_dir, device)
    net64 = load_checkpoint(checkpoint_dir, dtype=torch.float64)[0].eval()
    bad = []
    if fused.metadata.extra["compiled_batch"] is not True or fused.compiled_features is None:
        bad.append(f"compiled_batch of the compiled backend: {fused.metadata.extra}")
    if plain.metadata.extra["compiled_batch"] is not False:
        bad.append(f"compiled_batch of the plain backend: {plain.metadata.extra}")
    rng = np.random.default_rng(2)
    channels = fused.metadata.input_channels
    for lengths in ([97], [200, 131, 64], [255, 7, 180, 33], [400, 300]):
        batch = rng.standard_normal((len(lengths), max(lengths), channels)).astype(np.float32)
        for row, n in zip(batch, lengths, strict=True):
            row[n:] = 0
        lens = np.array(lengths)
        got, want = fused.predict(batch, lens), plain.predict(batch, lens)
        with torch.inference_mode():
            ref = net64(torch.from_numpy(batch).double(), torch.from_numpy(lens)).numpy()
        if got.shape != want.shape:
            bad.append(f"lengths {lengths}: shape {got.shape} vs {want.shape}")
            continue
        scale = np.abs(ref).max()
        for what, other in (("plain", want), ("float64", ref)):
            diff = np.abs(got - other).max() / scale
            if not diff <= 1e-5:
                bad.append(f"lengths {lengths}: predict vs {what} {diff:.1e}")
        frames_got = fused.predict_frames(batch, lens)
        frames_want = plain.predict_frames(batch, lens)
        for i, (g, w) in enumerate(zip(frames_got, frames_want, strict=True)):
            if g.shape != w.shape or not np.abs(g - w).max() <= 1e-5 * max(1.0, np.abs(w).max()):
                bad.append(f"lengths {lengths}: predict_frames row {i} differs")
    # the warm-up at load compiled every graph: a new length or batch must not recompile (a
    # length pinned in the graph made every first request of a new length compile for 9 s)
    if counters["stats"]["unique_graphs"] != graphs_at_load:
        bad.append(f"requests compiled {counters['stats']['unique_graphs'] - graphs_at_load} "
                   "more graphs after load")
    return bad


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    if what == "batch":
        problems = [f"{path}: {p}" for path in args for p in check_batch(path)]
    else:
        problems = (check_chunking(*map(int, args)) if what == "chunking"
                    else check_backend(args[0]))
    print("\n".join(problems) or "ok")
    sys.exit(1 if problems else 0)
