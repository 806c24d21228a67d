"""REST forwards reuse kernels computed at load (`S4DNetwork.kernels`, the torch backend).

K_l does not depend on the length it is computed for, so a kernel of the longest batch
sequence serves every shorter one; the answers stay those of the plain forward (float32
rounding) and of the float64 forward, and a sequence longer than the kept kernels computes
its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ROOT

from model.checkpoint import load_checkpoint
from server.backends.torch_backend import MAX_KERNEL_STEPS, TorchBackend, batch_kernel_steps
from server.settings import Settings

SHIPPED = ROOT / "checkpoints"


@pytest.mark.parametrize("model", ["kws-s4d", "ecg-s4d", "kws-events-s4d"])
def test_backend_forward_with_kept_kernels_equals_the_plain_and_float64_forwards(model):
    be = TorchBackend.load(SHIPPED / model, "cpu")
    patch = be.metadata.patch_size
    assert be.kernels is not None
    kept = be.kernels[0].shape[-1]
    assert kept == batch_kernel_steps(Settings(), patch)
    net64 = load_checkpoint(SHIPPED / model)[0].double().eval()
    rng = np.random.default_rng(0)
    channels = be.metadata.input_channels
    lengths = np.array([kept * patch, 97 * patch + 3, 5 * patch])  # odd lengths pad too
    batch = (0.1 * rng.standard_normal((3, kept * patch, channels))).astype(np.float32)
    got = be.predict(batch, lengths)
    x, n = torch.from_numpy(batch), torch.from_numpy(lengths)
    with torch.inference_mode():
        plain = be.network(x, n).numpy()
        ref = net64(x.double(), n).numpy()
    scale = np.abs(ref).max()
    assert np.abs(got - plain).max() <= 1e-5 * scale
    assert np.abs(got - ref).max() <= 1e-5 * scale
    if be.metadata.streamable:  # the events path (prefix logits) uses them too
        frames = be.predict_frames(batch, lengths)
        with torch.inference_mode():
            prefix = net64.prefix_logits(x.double(), n).numpy()
        for k, length in enumerate(lengths):  # the last frame end is the sequence's end
            want = prefix[k, length // patch - 1]
            assert np.abs(frames[k][-1] - want).max() <= 1e-5 * np.abs(prefix).max()


def test_longer_than_the_kept_kernels_computes_its_own():
    network = load_checkpoint(SHIPPED / "ecg-s4d")[0].eval()
    short = network.kernels(8)
    x = 0.1 * torch.randn(2, 40 * network.cfg.patch_size, 1, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(network(x, kernels=short), network(x), rtol=0, atol=1e-6)
        assert torch.allclose(network(x, kernels=network.kernels(40)), network(x), rtol=0, atol=1e-6)


def test_kept_kernel_steps_follow_the_batcher_and_are_capped():
    assert batch_kernel_steps(Settings(predict_chunk_samples=65536), 160) == 409
    assert batch_kernel_steps(Settings(predict_chunk_samples=0, max_sequence_samples=960000), 5) \
        == MAX_KERNEL_STEPS
