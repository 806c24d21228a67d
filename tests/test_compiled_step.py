"""The streaming step through torch.compile (`StreamingNetwork.compile()`, `--compile-step`):
the same numbers as the plain step for any chunking (float64 reference), and a server whose
compiler fails serves the plain step instead of failing to load."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.network import S4DNetwork
from model.streaming import StreamingNetwork
from server.backends.torch_backend import TorchBackend

needs_compiler = pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
    reason="torch.compile on a CPU generates C++: no compiler here")


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


@needs_compiler
@pytest.mark.parametrize("frame, block, patch", [(16, 8, 1), (50, 64, 5)])
def test_compiled_step_equals_plain_and_float64_for_any_chunking(frame, block, patch):
    """Two networks of other shapes compiled in one process (the second run of this test):
    each keeps its own shapes static (a shared code object once made the second one's frame
    length symbolic, and Inductor failed on it)."""
    cfg = ModelConfig(d_input=2 if patch == 1 else 1, d_model=8 + 4 * (patch > 1), d_state=8,
                      n_layers=2, d_output=3, pooling="mean", patch_size=patch)
    net = S4DNetwork(cfg, seed=5).eval()
    net64 = S4DNetwork(cfg, seed=5).double().eval()
    # (16, 8): two sub-blocks per frame, the carry scan; (50, 64, patch 5): one block of 10
    # steps, where the plain step uses a single GEMM below batch 4 and the compiled one not
    plain = StreamingNetwork(net, frame, block_size=block)
    fused = StreamingNetwork(net, frame, block_size=block).compile()
    assert fused.compiled and not plain.compiled
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 3, 6):  # batch 1 is compiled apart (size-1 specialisation), then dynamic
        x = torch.randn(batch, 100, cfg.d_input, generator=gen)
        with torch.inference_mode():
            ref = net64(x.double())
        for cuts in ([], [37, 70], [5, 16, 21]):
            cuts = [c // patch * patch for c in cuts]  # pieces of whole patches
            got, want = streamed(fused, x, cuts), streamed(plain, x, cuts)
            assert rel(got, want) <= 1e-5, (batch, cuts)
            assert rel(got, ref) <= 1e-5, (batch, cuts)


@needs_compiler
def test_server_backend_compiles_the_step(monkeypatch, checkpoint_dir):
    monkeypatch.setenv("S4D_COMPILE_STEP", "true")
    fused = TorchBackend.load(checkpoint_dir / "tiny", "cpu")
    monkeypatch.delenv("S4D_COMPILE_STEP")
    plain = TorchBackend.load(checkpoint_dir / "tiny", "cpu")
    assert fused.metadata.extra["compiled_step"] is True
    assert plain.metadata.extra["compiled_step"] is False
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((4, fused.frame_size, fused.metadata.input_channels))
    got, _ = fused.step(frames.astype(np.float32), fused.streaming.zero_state(4))
    want, _ = plain.step(frames.astype(np.float32), plain.streaming.zero_state(4))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_failing_compiler_leaves_the_plain_step(monkeypatch, checkpoint_dir, caplog):
    def no_compiler(self, **options):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setenv("S4D_COMPILE_STEP", "true")
    monkeypatch.setattr(StreamingNetwork, "compile", no_compiler)
    backend = TorchBackend.load(checkpoint_dir / "tiny", "cpu")
    assert backend.metadata.extra["compiled_step"] is False
    assert not backend.streaming.compiled
    assert "serving it uncompiled" in caplog.text
    logits, _ = backend.step(np.zeros((1, backend.frame_size, backend.metadata.input_channels),
                                      np.float32), backend.streaming.zero_state(1))
    assert np.isfinite(logits).all()
