"""The S4D layer's math: inits as in the paper, kernel == unrolled recurrence."""

import math

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.s4d import (
    INITS,
    S4DKernel,
    causal_conv,
    fft_size,
    init_modes,
    kernel_block,
    vandermonde_kernel,
)


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("transform", ["exp", "relu", "none"])
def test_kernel_equals_unrolled_recurrence(init, disc, transform):
    cfg = ModelConfig(d_model=4, d_state=16, init=init, discretization=disc, real_transform=transform)
    kernel = S4DKernel(cfg, torch.Generator().manual_seed(0)).double()
    length = 300
    k = kernel.kernel(length, dtype=torch.float64)[0]  # [H, L]
    da, db, _, c = kernel.discrete(torch.float64)
    # impulse response of x_t = dA x_{t-1} + dB u_t, y_t = 2 Re(C x_t)
    x = db.clone()
    ref = []
    for _ in range(length):
        ref.append(2 * (c[0] * x).sum(-1).real)
        x = da * x
    ref = torch.stack(ref, -1)
    assert torch.allclose(k, ref, rtol=1e-10, atol=1e-12 * ref.abs().max().item())


def test_fft_conv_is_causal_linear_convolution():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(3, 50, dtype=torch.float64, generator=g)
    k = torch.randn(3, 50, dtype=torch.float64, generator=g)
    direct = torch.stack(
        [torch.stack([(k[h, : t + 1].flip(0) * u[h, : t + 1]).sum() for t in range(50)]) for h in range(3)]
    )
    assert torch.allclose(causal_conv(u, k), direct, atol=1e-12)


def _smooth(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def test_fft_size_is_the_next_length_with_small_factors():
    for n in [*range(1, 2100), 31999, 32001, 32003, 65537, 250_001]:
        f = fft_size(n)
        assert f >= n and _smooth(f), n
        assert not any(_smooth(m) for m in range(n, f)), (n, f)
    assert fft_size(2 * 16001 - 1) == 32256  # not 2 x 16001 (a prime: Bluestein)


@pytest.mark.parametrize("length", [1, 2, 7, 61, 97, 128, 211])
def test_fft_conv_any_length_and_along_a_middle_dim(length):
    """Odd and prime lengths pad to fft_size(2L - 1), not 2L; still no wrap-around. `dim=1`
    (the EMA pooling of prefix_logits) equals the last-dim form on the moved tensor."""
    g = torch.Generator().manual_seed(length)
    u = torch.randn(2, 3, length, dtype=torch.float64, generator=g)
    k = torch.randn(3, length, dtype=torch.float64, generator=g)
    lags = torch.arange(length)
    toeplitz = torch.where(lags[:, None] >= lags, k[:, (lags[:, None] - lags).clamp(min=0)], 0)
    direct = torch.einsum("hts,bhs->bht", toeplitz, u)
    assert torch.allclose(causal_conv(u, k), direct, atol=1e-12)
    one = k[0]
    along = causal_conv(u.transpose(1, 2), one, dim=1)  # [B, L, C], one kernel for every C
    assert torch.allclose(along, causal_conv(u, one.expand(3, -1)).transpose(1, 2), atol=1e-12)


def test_init_formulas_match_the_paper():
    n_state = 64
    m = n_state // 2
    n = np.arange(m)
    a_lin, _ = init_modes("lin", n_state)
    assert np.allclose(a_lin.real.numpy(), -0.5)
    assert np.allclose(a_lin.imag.numpy(), math.pi * n)
    a_inv, _ = init_modes("inv", n_state)
    assert np.allclose(a_inv.real.numpy(), -0.5)
    assert np.allclose(a_inv.imag.numpy(), n_state / math.pi * (n_state / (2 * n + 1) - 1))
    a_legs, b_legs = init_modes("legs", n_state)
    assert np.allclose(a_legs.real.numpy(), -0.5, atol=1e-10)  # LegS eigenvalues: real part -1/2
    assert (a_legs.imag.numpy() > 0).all()  # one of each conjugate pair
    assert b_legs.abs().min() > 0
    a_real, _ = init_modes("real", n_state)
    assert np.allclose(a_real.numpy(), -(n + 1))
    a_rand, _ = init_modes("random", n_state, torch.Generator().manual_seed(0))
    assert np.allclose(a_rand.real.numpy(), -0.5) and (a_rand.imag.numpy() > 0).all()


def test_real_transforms_give_the_same_initial_a():
    kernels = {
        t: S4DKernel(ModelConfig(d_model=2, d_state=8, real_transform=t), torch.Generator().manual_seed(0))
        for t in ("exp", "relu", "none")
    }
    a = [k.continuous(torch.float64)[1] for k in kernels.values()]
    assert torch.allclose(a[0], a[1]) and torch.allclose(a[0], a[2])


def test_ssm_parameter_group_has_own_lr_and_no_weight_decay():
    from model.network import S4DNetwork

    cfg = ModelConfig(d_model=8, d_state=8, n_layers=2, lr_ssm=1e-3, trainable_B=True)
    net = S4DNetwork(cfg)
    groups = net.parameter_groups(lr=1e-2, weight_decay=0.05)
    ssm = groups[-1]
    assert ssm["lr"] == 1e-3 and ssm["weight_decay"] == 0.0
    assert len(ssm["params"]) == 2 * 4  # log_dt, A real, A imag, B per layer
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))


@torch.no_grad()
def test_batch_kernel_is_blocked_and_as_exact_as_the_direct_one():
    """S4DKernel.kernel blocks the Vandermonde product from 64 lags (kernel_block): in float32
    it stays as close to the float64 direct kernel as the float32 direct one is."""
    assert kernel_block(63) is None and kernel_block(64) == 16 and kernel_block(10**6) == 256
    assert kernel_block(4095, "cuda") is None and kernel_block(4096, "cuda") == 64
    cfg = ModelConfig(d_model=8, d_state=64)
    kernel = S4DKernel(cfg, torch.Generator().manual_seed(3))
    for length in (63, 64, 1000, 20000):
        ref = vandermonde_kernel(*_kernel_args(kernel, torch.float64), length)
        direct = vandermonde_kernel(*_kernel_args(kernel, torch.float32), length)
        auto = kernel.kernel(length)
        scale = ref.abs().max()
        err_direct = float((direct.double() - ref).abs().max() / scale)
        err_auto = float((auto.double() - ref).abs().max() / scale)
        assert auto.shape == ref.shape and err_auto <= max(2 * err_direct, 1e-6), (length, err_auto)


def _kernel_args(kernel, dtype):
    _, db, log_da, c = kernel.discrete(dtype)
    return c * db, log_da
