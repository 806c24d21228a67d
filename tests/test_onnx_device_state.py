"""ONNX Runtime with device-resident streaming state (IOBinding over torch tensors): the
same numbers as the host-array path and as the float64 recurrence, through the backend's
slab (gather, step, scatter) with partial frames. Runs with the CPU provider; on a GPU the
same code binds CUDA tensors (bench/gpu_check_gpu10.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from model.config import CheckpointConfig, ModelConfig, TaskConfig  # noqa: E402
from model.export import export_step  # noqa: E402
from model.network import S4DNetwork  # noqa: E402
from model.state import STATE_NAMES  # noqa: E402
from model.streaming import StreamingNetwork  # noqa: E402
from server.backends.base import ModelMetadata  # noqa: E402
from server.backends.onnx_backend import OnnxBackend  # noqa: E402

CASES = {
    "mean": dict(d_input=1, d_model=16, d_state=8, n_layers=2, d_output=3),
    "none": dict(d_input=2, d_model=8, d_state=4, n_layers=2, d_output=4, patch_size=2,
                 pooling="none", init="lin"),
}
FRAME = 32


def backend(tmp_path, case: str, device_state: bool):
    mcfg = ModelConfig(**CASES[case])
    net = S4DNetwork(mcfg, seed=3)
    names = [str(i) for i in range(mcfg.d_output)]
    tcfg = TaskConfig(name="t", sample_rate=1000, input_channels=mcfg.d_input,
                      class_names=names, frame_size=FRAME)
    config = CheckpointConfig(model=mcfg, task=tcfg)
    path = tmp_path / f"{case}-step.onnx"
    if not path.exists():
        export_step(net, FRAME, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_checkpoint("t", config, frame_size=FRAME, streamable=True,
                                         parameters=0, backend="onnxruntime", device="cpu")
    info = SimpleNamespace(max_steps=64)  # the batch graph is not part of these tests
    return OnnxBackend(sess, None, info, config, meta, device_state=device_state), net


def stream(be, x: np.ndarray, cuts: list[int], slots: list[int]):
    """Run sessions x [B, L, C] through the slab in chunks ending at `cuts`."""
    slab = be.new_slab(8)
    slab.zero(slots)
    start, outs = 0, []
    for end in cuts:
        frames = np.concatenate([x[:, start:end], np.zeros_like(x[:1, start:end])])  # + padding
        logits, new = be.step(frames, slab.gather(slots, pad_to=len(slots) + 1))
        slab.scatter(slots, new)
        outs.append(np.asarray(logits)[: len(slots)])
        start = end
    return outs, slab.gather(slots)


@pytest.mark.parametrize("case", sorted(CASES))
def test_device_state_equals_host_path_and_float64(tmp_path, case):
    bound, net = backend(tmp_path, case, True)
    host, _ = backend(tmp_path, case, False)
    assert bound.device_state and not host.device_state
    c = net.cfg.d_input
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3 * FRAME + 6, c)).astype(np.float32)  # last chunk partial
    cuts = [FRAME, 2 * FRAME, 3 * FRAME, 3 * FRAME + 6]
    out_b, state_b = stream(bound, x, cuts, [4, 0, 6])
    out_h, state_h = stream(host, x, cuts, [1, 2, 3])
    assert isinstance(state_b["x_re"], torch.Tensor)  # the slab is device (torch) tensors
    for a, b in zip(out_b, out_h, strict=True):
        assert np.array_equal(a, b)  # same graph, same inputs: bit for bit
    for k in STATE_NAMES:
        assert np.array_equal(state_b[k].numpy(), state_h[k])
    ref = StreamingNetwork(net, FRAME, dtype=torch.float64)
    st = ref.zero_state(3)
    with torch.no_grad():
        start = 0
        for end, got in zip(cuts, out_b, strict=True):
            logits, st = ref.step(torch.from_numpy(x[:, start:end]).double(), st)
            start = end
            err = np.abs(got - logits.numpy()).max() / np.abs(logits.numpy()).max()
            assert err < 1e-5
    for k in STATE_NAMES:
        want = st[k].numpy()
        assert np.abs(state_b[k].numpy() - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_device_state_setting_reaches_the_backend(monkeypatch):
    from server.settings import Settings

    monkeypatch.setenv("S4D_ONNX_DEVICE_STATE", "1")
    assert Settings().onnx_device_state is True
    monkeypatch.setenv("S4D_ONNX_DEVICE_STATE", "0")
    assert Settings().onnx_device_state is False
    monkeypatch.delenv("S4D_ONNX_DEVICE_STATE")
    assert Settings().onnx_device_state is None  # auto: on with CUDA, off on the CPU


def test_cuda_provider_runs_on_the_engines_own_gpu(monkeypatch):
    """An engine on cuda:1 must not run its ONNX sessions on GPU 0 (the provider's default)."""
    ort = pytest.importorskip("onnxruntime")
    from server.backends.onnx_backend import choose_providers

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for device, index in (("cuda:1", "1"), ("cuda:3", "3"), ("cuda", "0"), ("cuda:0", "0")):
        (name, options), cpu = choose_providers(device)
        assert name == "CUDAExecutionProvider" and options["device_id"] == index
        assert cpu == "CPUExecutionProvider"
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
