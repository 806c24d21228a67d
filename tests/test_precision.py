"""Precision modes (fp32 | tf32 | bf16): fp32 is the exact default, tf32 is fp32 on a CPU,
bf16 keeps the state float32 and stays within a bounded distance of the float64 reference
on any chunking; the setting reaches the torch backend through Settings and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import CheckpointConfig, ModelConfig, TaskConfig
from model.network import S4DNetwork
from model.precision import PRECISIONS, matmul_precision
from model.streaming import StreamingNetwork

CFG = ModelConfig(d_input=1, d_model=32, d_state=16, n_layers=2, d_output=5, patch_size=2)
FRAME = 64  # 32 steps: sub-blocks of 32 (block_size 32 below) and partial frames


def run_stream(stream, x, cuts):
    state = stream.zero_state(x.shape[0])
    start = 0
    with torch.inference_mode():
        for end in cuts:
            logits, state = stream.step(x[:, start:end], state)
            start = end
    return logits, state


@pytest.fixture(scope="module")
def net():
    return S4DNetwork(CFG, seed=1).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 5 * FRAME + 10, 1, generator=g)


@pytest.mark.parametrize("batch", [2, 4])  # 2: one-block frames take the single-GEMM path
def test_fp32_default_and_cpu_tf32_are_the_same_computation(net, data, batch):
    data = data[:batch]
    cuts = [FRAME, 2 * FRAME, 2 * FRAME + 6, 3 * FRAME + 6, 4 * FRAME + 6, 5 * FRAME + 6, 5 * FRAME + 10]
    block = 16 if batch == 4 else None
    ref, ref_state = run_stream(StreamingNetwork(net, FRAME, block_size=block), data, cuts)
    for mode in ("fp32", "tf32"):  # tf32 switches CUDA tensor cores only: a no-op here
        got, state = run_stream(StreamingNetwork(net, FRAME, block_size=block, precision=mode),
                                data, cuts)
        assert torch.equal(got, ref)
        assert all(torch.equal(state[k], ref_state[k]) for k in state)


@pytest.mark.parametrize("cuts", [[FRAME, 2 * FRAME, 3 * FRAME], [10, FRAME + 10, 2 * FRAME + 4]])
def test_bf16_state_is_float32_and_close_to_float64(net, data, cuts):
    x = data[:, : cuts[-1]]
    bf16 = StreamingNetwork(net, FRAME, block_size=16, precision="bf16")
    logits, state = run_stream(bf16, x, cuts)
    assert logits.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in state.values())
    with torch.no_grad():
        ref = S4DNetwork(CFG, seed=1).double().eval()(x.double())
    dp = (torch.softmax(logits.double(), -1) - torch.softmax(ref, -1)).abs().max().item()
    assert 0 < dp < 0.03  # bf16 really changes the numbers, within a bound
    fp32, _ = run_stream(StreamingNetwork(net, FRAME, block_size=16), x, cuts)
    dp32 = (torch.softmax(fp32.double(), -1) - torch.softmax(ref, -1)).abs().max().item()
    assert dp32 < 1e-5 and dp32 < dp


def test_bf16_state_carry_matches_the_float32_state(net, data):
    """The state itself (not only the logits) stays near the exact one: the carry is float32."""
    cuts = [FRAME * i for i in range(1, 6)]
    _, s16 = run_stream(StreamingNetwork(net, FRAME, block_size=16, precision="bf16"), data, cuts)
    _, s32 = run_stream(StreamingNetwork(net, FRAME, block_size=16), data, cuts)
    for k in ("x_re", "x_im"):
        scale = s32[k].abs().max()
        assert (s16[k] - s32[k]).abs().max() <= 0.05 * scale


def test_matmul_precision_restores_the_tf32_switch_and_refuses_unknown_modes():
    before = torch.backends.cuda.matmul.allow_tf32
    for mode in PRECISIONS:
        with matmul_precision(mode, "cpu"):
            assert torch.backends.cuda.matmul.allow_tf32 is False  # CPU: never TF32
        assert torch.backends.cuda.matmul.allow_tf32 == before
    with pytest.raises(ValueError, match="unknown precision"):
        with matmul_precision("fp16", "cpu"):
            pass
    with pytest.raises(ValueError, match="unknown precision"):
        StreamingNetwork(S4DNetwork(CFG), FRAME, precision="fp8")


def test_precision_setting_flag_and_torch_backend(tmp_path, monkeypatch, net, data):
    import argparse

    from model.checkpoint import save_checkpoint
    from server.backends.torch_backend import TorchBackend
    from server.cli import export_backend_settings, register, settings_from_args
    from server.settings import Settings

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--precision", "bf16"])
    settings = settings_from_args(args)
    assert settings.precision == "bf16"
    monkeypatch.setenv("S4D_PRECISION", "fp32")  # recorded: restored (unset) after the test
    export_backend_settings(settings)  # what `s4d serve` does for the engine processes
    assert Settings().precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--precision", "fp16"])

    task = TaskConfig(name="t", sample_rate=1000, input_channels=1,
                      class_names=[str(i) for i in range(5)], frame_size=FRAME)
    ckpt = save_checkpoint(tmp_path / "m", net, CheckpointConfig(model=CFG, task=task))
    results = {}
    for mode in ("fp32", "bf16"):
        monkeypatch.setenv("S4D_PRECISION", mode)
        be = TorchBackend.load(ckpt, "cpu")
        assert be.metadata.extra["precision"] == mode and be.streaming.precision == mode
        x = data[:2, : 2 * FRAME].numpy()
        slab = be.new_slab(2)
        logits, state = be.step(x[:, :FRAME], slab.gather([0, 1]))
        assert logits.dtype == np.float32 and all(v.dtype == torch.float32 for v in state.values())
        logits, _ = be.step(x[:, FRAME:], state)
        batch = be.predict(x, np.array([2 * FRAME] * 2))
        assert batch.dtype == np.float32
        results[mode] = (logits, batch)
    s32, b32 = results["fp32"]
    s16, b16 = results["bf16"]
    assert np.abs(s32 - b32).max() < 1e-4  # fp32: stream == batch
    assert 0 < np.abs(s16 - s32).max() < 0.1 and 0 < np.abs(b16 - b32).max() < 0.1
