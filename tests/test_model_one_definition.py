"""The shared pieces of model/ (issue 10 item 6): the layer's own recurrent step, the one
block loop, the blocked Vandermonde evaluation and the state layout, checked against the
forms that use them."""

from __future__ import annotations

import torch

from model.config import ModelConfig
from model.network import S4DNetwork, run_blocks
from model.s4d import vandermonde_kernel
from model.state import STATE_NAMES, state_bytes_per_session, state_row_shapes
from model.streaming import StreamingNetwork


def test_layer_step_is_the_convolution_one_sample_at_a_time():
    cfg = ModelConfig(d_input=1, d_model=6, d_state=8, n_layers=1, d_output=2, init="inv")
    layer = S4DNetwork(cfg, seed=2).double().blocks[0].s4d
    u = torch.randn(3, 40, 6, dtype=torch.float64)
    with torch.no_grad():
        conv = layer(u)
        params = layer.step_parameters(torch.float64)
        x = torch.zeros(3, 6, 4, dtype=torch.complex128)
        ys = []
        for t in range(u.shape[1]):
            y, x = layer.step(u[:, t], x, params)
            ys.append(y)
    assert torch.allclose(torch.stack(ys, 1), conv, atol=1e-10, rtol=0)


def test_run_blocks_is_the_network_forward():
    cfg = ModelConfig(d_input=2, d_model=8, d_state=4, n_layers=3, d_output=3)
    net = S4DNetwork(cfg, seed=0).eval()
    x = torch.randn(2, 30, 2)
    calls = []

    def core(i, block, u):
        calls.append(i)
        return block.s4d(u)

    with torch.no_grad():
        h = run_blocks(net.blocks, net.embed(x), core)
        assert torch.equal(net.decoder(h.mean(1)), net(x))
    assert calls == [0, 1, 2]


def test_blocked_vandermonde_equals_the_direct_one():
    g = torch.Generator().manual_seed(0)
    log_da = torch.complex(-torch.rand(5, 7, generator=g, dtype=torch.float64),
                           torch.randn(5, 7, generator=g, dtype=torch.float64))
    coef = torch.randn(2, 5, 7, generator=g, dtype=torch.complex128)
    for length, block in ((1, 4), (100, 16), (333, 128)):
        direct = vandermonde_kernel(coef, log_da, length)
        blocked = vandermonde_kernel(coef, log_da, length, block)
        assert blocked.shape == direct.shape == (2, 5, length)
        assert torch.allclose(blocked, direct, atol=1e-12, rtol=0)


def test_state_layout_is_the_wire_format():
    cfg = ModelConfig(d_input=1, d_model=128, d_state=64, n_layers=4, d_output=12)
    assert STATE_NAMES == ("x_re", "x_im", "pool", "count")  # snapshots and step.onnx
    assert state_row_shapes(cfg) == {"x_re": (4, 128, 32), "x_im": (4, 128, 32),
                                     "pool": (128,), "count": (1,)}
    assert state_bytes_per_session(cfg) == 131_588  # DESIGN.md / the kws card
    stream = StreamingNetwork(S4DNetwork(cfg), 320)
    zero = stream.zero_state(3)
    assert list(zero) == list(STATE_NAMES)
    assert {k: tuple(v.shape[1:]) for k, v in zero.items()} == state_row_shapes(cfg)
