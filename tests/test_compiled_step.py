"""The streaming step through torch.compile (`StreamingNetwork.compile()`, `--compile-step`):
the same numbers as the plain step for any chunking (float64 reference), and a server whose
compiler fails serves the plain step instead of failing to load. The same for the REST
forwards (`S4DNetwork.compiled_features`, `--compile-batch`). The compiling checks run in a
process of their own (tests/compiled_step_check.py says why)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.network import S4DNetwork
from model.streaming import StreamingNetwork
from server.backends.torch_backend import TorchBackend

ROOT = Path(__file__).resolve().parent.parent
CHECK = Path(__file__).with_name("compiled_step_check.py")

needs_compiler = pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
    reason="torch.compile on a CPU generates C++: no compiler here")


def run_check(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, str(CHECK), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@needs_compiler
@pytest.mark.parametrize("frame, block, patch", [(16, 8, 1), (50, 64, 5)])
def test_compiled_step_equals_plain_and_float64_for_any_chunking(frame, block, patch):
    """(16, 8): two sub-blocks per frame, the carry scan; (50, 64, patch 5): one block of 10
    steps, where the plain step uses a single GEMM below batch 4 and the compiled one does not.
    Batches 1, 3, 6: batch 1 compiles apart (size-1 specialisation), then one dynamic batch."""
    run_check("chunking", str(frame), str(block), str(patch))


@needs_compiler
def test_server_backend_compiles_the_step(checkpoint_dir):
    run_check("backend", str(checkpoint_dir / "tiny"))


@needs_compiler
def test_compiled_batch_forward_equals_plain_and_float64(checkpoint_dir):
    """`--compile-batch`: patches of 2 samples, 2 channels and last pooling (tiny2),
    per-step outputs (tinynone), ema pooling and events' per-prefix logits (tinyema)."""
    run_check("batch", *(str(checkpoint_dir / m) for m in ("tiny2", "tinynone", "tinyema")))


def test_a_failing_batch_compiler_leaves_the_plain_forward(monkeypatch, checkpoint_dir, caplog):
    def no_compiler(self, **options):
        raise RuntimeError("no working C++ compiler")

    monkeypatch.setenv("S4D_COMPILE_BATCH", "true")
    monkeypatch.setattr(S4DNetwork, "compiled_features", no_compiler)
    backend = TorchBackend.load(checkpoint_dir / "tiny", "cpu")
    assert backend.metadata.extra["compiled_batch"] is False
    assert backend.compiled_features is None
    assert "serving it uncompiled" in caplog.text
    x = np.random.default_rng(0).standard_normal((2, 100, 1)).astype(np.float32)
    got = backend.predict(x, np.array([100, 60]))
    with torch.inference_mode():
        want = backend.network(torch.from_numpy(x), torch.tensor([100, 60])).numpy()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)


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


def trained_looking(model: dict, seed: int):
    """A small network whose norms are not a fresh LayerNorm's 1 and 0 (a form that dropped a
    norm's weight or bias would pass with those), and the generator that drew them."""
    from model.config import ModelConfig

    cfg = ModelConfig(d_model=8, d_state=8, n_layers=2, d_output=3, **model)
    net = S4DNetwork(cfg, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (p for name, p in net.named_parameters() if ".norm." in name):
            p.copy_(torch.randn(p.shape, generator=gen))
    return net, gen


@pytest.mark.parametrize("prenorm, norm", [(True, "layer"), (False, "layer"), (True, "none")])
def test_compiled_forms_arithmetic_equals_plain_step_eagerly(prenorm, norm):
    """What the compiled step runs (channel-major blocks, stacked scan, bmm + add; `fused=True`)
    run eagerly, without a compiler: the plain step's numbers, for pre- and post-norm blocks,
    full and partial sub-blocks."""
    from model.state import STATE_NAMES

    net, gen = trained_looking(dict(d_input=1, prenorm=prenorm, norm=norm), seed=3)
    for frame, block in ((24, 8), (20, 8)):  # 3 full sub-blocks; 2 full + a trailing 4
        stream = StreamingNetwork(net, frame, block_size=block).eval()
        state = {k: torch.randn(v.shape, generator=gen) * 0.1
                 for k, v in stream.zero_state(3).items()}
        state["count"] = torch.full_like(state["count"], 5.0)
        x = torch.randn(3, frame, 1, generator=gen)
        args = (x, *(state[n] for n in STATE_NAMES))
        with torch.inference_mode():
            plain = stream._forward(*args)
            fused = stream._forward(*args, fused=True)
        for p, f in zip(plain, fused, strict=True):
            torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prenorm, bidirectional", [(True, False), (False, False), (True, True)])
def test_channel_major_batch_features_equal_the_plain_forward(prenorm, bidirectional):
    """The compiled REST forward's blocks on [H, B, steps] (`features(channel_major=True)`),
    run eagerly: the plain features, with padding masks, kept kernels or not, and a
    bidirectional network."""
    net, gen = trained_looking(dict(d_input=2, prenorm=prenorm, bidirectional=bidirectional),
                               seed=5)
    x = torch.randn(3, 40, 2, generator=gen)
    lengths = torch.tensor([40, 23, 7])
    with torch.inference_mode():
        for kernels in (None, net.kernels(48)):
            for lens in (None, lengths):
                want = net.features(x, lens, kernels)
                got = net.features(x, lens, kernels, channel_major=True)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
