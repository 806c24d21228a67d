"""The S4D layer (Gu, Gupta, Goel, Re 2022): diagonal A, Vandermonde kernel, FFT convolution.

Per channel h and complex mode n (N/2 modes; the conjugate halves are implicit, hence the
factor 2 and the real part): K_l = 2 Re sum_n C_n dB_n dA_n^l,  y = K * u + D u.
`discretize` is shared with the recurrent forms so every path uses the same numbers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

INITS = ("legs", "inv", "lin", "real", "random")


def hippo_legs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The HiPPO-LegS matrix A (N x N) and vector B, float64 (as in S4)."""
    q = np.arange(n, dtype=np.float64)
    r = np.sqrt(2 * q + 1)
    a = -np.tril(np.outer(r, r), -1) - np.diag(q + 1)
    return a, r.copy()


def legs_normal_eig(n: int, return_vectors: bool = False):
    """Eigen-decomposition of the normal part of HiPPO-LegS, A + P P^T with P = sqrt(q + 1/2).

    Returns the N/2 eigenvalues with positive imaginary part and V^* B / 2 for them
    (S4D-LegS; optionally V too). The normal part is -1/2 I plus a skew-symmetric matrix, so
    the real parts are all -1/2. The factor 1/2 is the paper's: with it the diagonal kernel
    converges to the full S4-LegS kernel as N grows (tests/test_legs_theorem.py).
    """
    a, b = hippo_legs(n)
    p = np.sqrt(np.arange(n) + 0.5)
    a_normal = a + np.outer(p, p)
    skew = a_normal + 0.5 * np.eye(n)
    w_imag, v = np.linalg.eigh(-1j * skew)  # skew = i * (Hermitian -i*skew)
    order = np.argsort(w_imag)[::-1][: n // 2]  # positive imaginary parts, conjugates implicit
    lam = -0.5 + 1j * w_imag[order]
    vb = v[:, order].conj().T @ b / 2
    return (lam, vb, v[:, order]) if return_vectors else (lam, vb)


def init_modes(init: str, n_state: int, generator: torch.Generator | None = None):
    """A (complex, [N/2]) and B (complex, [N/2]) for one channel under an S4D init."""
    m = n_state // 2
    n = np.arange(m, dtype=np.float64)
    b = np.ones(m, dtype=np.complex128)
    if init == "lin":
        a = -0.5 + 1j * math.pi * n
    elif init == "inv":
        a = -0.5 + 1j * (n_state / math.pi) * (n_state / (2 * n + 1) - 1)
    elif init == "legs":
        a, b = legs_normal_eig(n_state)
    elif init == "real":
        a = -(n + 1) + 0j
    elif init == "random":
        g = torch.randn(m, generator=generator, dtype=torch.float64).numpy()
        a = -0.5 + 1j * np.exp(g)
    else:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    return torch.as_tensor(a, dtype=torch.complex128), torch.as_tensor(b, dtype=torch.complex128)


def discretize(dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, method: str):
    """(dA, dB, log dA) for dt [H], A [H, M], B [H, M] (complex). ZOH or bilinear."""
    dta = dt.unsqueeze(-1) * a
    if method == "zoh":
        da = torch.exp(dta)
        db = (da - 1) / a * b
        log_da = dta
    elif method == "bilinear":
        denom = 1 - dta / 2
        da = (1 + dta / 2) / denom
        db = dt.unsqueeze(-1) / denom * b
        log_da = torch.log(da)
    else:
        raise ValueError(f"unknown discretization {method!r}")
    return da, db, log_da


def mode_powers(log_da: torch.Tensor, length: int, start: int = 0) -> torch.Tensor:
    """dA^l = exp(l log dA) for l = start .. start + length - 1: [..., M, length].

    The one place powers of dA are formed: the kernel, the streaming frame matrices and the
    ONNX carry table all take them from here (so every form holds the same numbers)."""
    pos = torch.arange(start, start + length, device=log_da.device, dtype=log_da.real.dtype)
    return torch.exp(log_da.unsqueeze(-1) * pos)


def vandermonde_kernel(coef: torch.Tensor, log_da: torch.Tensor, length: int,
                       block: int | None = None) -> torch.Tensor:
    """K[..., l] = 2 Re sum_n coef[..., n] dA_n^l for l < length (dA = exp(log_da)).

    Default: dA^l directly, chunked in l (bounded memory). With `block`, the factorisation
    dA^(kb+j) = dA^(kb) dA^j turns it into one batched complex product of block x M and
    (length / block) x M powers (far fewer exponentials: long kernels, e.g. the ONNX export's
    precomputed one; equal to float64 rounding)."""
    if block:
        n_blocks = -(-length // block)
        inner = mode_powers(log_da, block)  # [..., M, block]
        starts = torch.arange(n_blocks, device=log_da.device, dtype=log_da.real.dtype) * block
        outer = torch.exp(log_da.unsqueeze(-1) * starts)  # [..., M, n_blocks]: dA^(kb)
        out = torch.einsum("...n,...nb,...nj->...bj", coef, outer, inner)
        return 2 * out.real.reshape(*out.shape[:-2], -1)[..., :length]
    out = []
    step = max(1, (1 << 22) // max(1, coef.numel()))
    for start in range(0, length, step):
        vander = mode_powers(log_da, min(length, start + step) - start, start)  # [..., M, l]
        out.append(2 * torch.einsum("...n,...nl->...l", coef, vander).real)
    return torch.cat(out, dim=-1)


def fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c 7^d >= n. FFT libraries (pocketfft on the CPU, cuFFT) have
    kernels for these factors only; a length with a large prime factor (2 x 16001, an odd
    clip's 2L) goes through Bluestein's algorithm, 2-3x slower."""
    best = 1 << max(0, n - 1).bit_length()
    odd = [1]
    for p in (3, 5, 7):
        odd = [m * p**e for m in odd for e in range(best.bit_length()) if m * p**e < best]
    for m in odd:
        v = m
        while v < n:
            v *= 2
        best = min(best, v)
    return best


def kernel_block(length: int, device_type: str = "cpu") -> int | None:
    """The Vandermonde block for a kernel of `length` lags: sqrt(L) up to a power of two, 16 to
    256 (block x M + L / block x M exponentials instead of L x M); None (direct) below 64 lags
    on a CPU and below 4,096 on a GPU. Complex exp is a CPU's cost (the kernels of a 60 s kws
    upload took 5.2 of its 5.4 s forward on two cores unblocked, 0.2 s blocked, and no less
    exact); a GPU pays for launches instead: blocked, kws-s4d's 100-step kernels made its 1 s
    forward 5.3 ms against 3.1 (H200), the DESIGN network's 16,000 steps 4.1 against 6.7."""
    if length < (64 if device_type == "cpu" else 4096):
        return None
    return min(256, max(16, 1 << math.ceil(math.log2(math.sqrt(length)))))


def causal_conv(u: torch.Tensor, k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """y[t] = sum_{s<=t} k[t-s] u[s] along `dim` (k's last dim) by FFT of a length >= 2L - 1
    (no wrap-around). Traced (torch.compile, torch.export) it keeps 2L: Dynamo passes a
    symbolic length as an int, and `fft_size` would pin the graph to that one length."""
    dim %= u.ndim
    length = u.shape[dim]
    traced = not isinstance(length, int) or torch.compiler.is_compiling()
    n = 2 * length if traced else fft_size(2 * length - 1)
    k_f = torch.fft.rfft(k, n=n)
    k_f = k_f.reshape(*k_f.shape, *[1] * (u.ndim - 1 - dim))  # frequencies along `dim`
    y = torch.fft.irfft(torch.fft.rfft(u, n=n, dim=dim) * k_f, n=n, dim=dim)
    return y.narrow(dim, 0, length)


class S4DKernel(nn.Module):
    """The SSM parameters of H channels and their discretized kernel."""

    def __init__(self, cfg: ModelConfig, seed_generator: torch.Generator | None = None):
        super().__init__()
        h, m = cfg.d_model, cfg.n_modes
        self.cfg = cfg
        log_dt = torch.rand(h, generator=seed_generator, dtype=torch.float64) * (
            math.log(cfg.dt_max) - math.log(cfg.dt_min)
        ) + math.log(cfg.dt_min)
        a, b = init_modes(cfg.init, cfg.d_state, seed_generator)
        a = a.expand(h, m).clone()
        b = b.expand(h, m).clone()
        n_kernels = 2 if cfg.bidirectional else 1
        c = torch.randn(n_kernels, h, m, 2, generator=seed_generator, dtype=torch.float64)
        c = c * math.sqrt(0.5)
        if cfg.real_transform == "exp":
            a_real_raw = torch.log(-a.real)
        else:
            a_real_raw = -a.real
        self.log_dt = nn.Parameter(log_dt.float())
        self.a_real_raw = nn.Parameter(a_real_raw.float())
        self.a_imag = nn.Parameter(a.imag.float())
        b_real = torch.view_as_real(b).float()
        if cfg.trainable_B:
            self.b = nn.Parameter(b_real)
        else:
            self.register_buffer("b", b_real)
        self.c = nn.Parameter(c.float())
        self.d = nn.Parameter(torch.randn(h, generator=seed_generator, dtype=torch.float64).float())

    def ssm_parameters(self) -> list[nn.Parameter]:
        """The parameters that train with their own lr and no weight decay."""
        params = [self.log_dt, self.a_real_raw, self.a_imag]
        if isinstance(self.b, nn.Parameter):
            params.append(self.b)
        return params

    def continuous(self, dtype: torch.dtype | None = None):
        """(dt [H], A [H, M], B [H, M], C [K, H, M]) as complex tensors in `dtype` precision."""
        real = dtype or self.log_dt.dtype
        transform = self.cfg.real_transform
        raw = self.a_real_raw.to(real)
        if transform == "exp":
            a_real = -torch.exp(raw)
        elif transform == "relu":
            a_real = -torch.clamp(F.relu(raw), min=1e-4)
        else:
            a_real = -raw
        a = torch.complex(a_real, self.a_imag.to(real))
        b = torch.view_as_complex(self.b.to(real).contiguous())
        c = torch.view_as_complex(self.c.to(real).contiguous())
        return torch.exp(self.log_dt.to(real)), a, b, c

    def discrete(self, dtype: torch.dtype | None = None):
        """(dA, dB, log dA, C) for the configured discretization."""
        dt, a, b, c = self.continuous(dtype)
        da, db, log_da = discretize(dt, a, b, self.cfg.discretization)
        return da, db, log_da, c

    def kernel(self, length: int, dtype: torch.dtype | None = None,
               block: int | None = None) -> torch.Tensor:
        """K [n_kernels, H, L]: the Vandermonde product 2 Re sum_n C_n dB_n dA_n^l, blocked
        (`kernel_block`) unless `block` says otherwise."""
        da, db, log_da, c = self.discrete(dtype)
        block = block or kernel_block(length, log_da.device.type)
        return vandermonde_kernel(c * db, log_da, length, block)


class S4D(nn.Module):
    """One S4D layer on [B, L, H]: FFT convolution with the kernel plus the D skip."""

    def __init__(self, cfg: ModelConfig, seed_generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.kernel = S4DKernel(cfg, seed_generator)

    def forward(self, u: torch.Tensor, k: torch.Tensor | None = None,
                dim: int = -1) -> torch.Tensor:
        """The convolution form on [B, L, H] (or channel-major [H, B, L], `dim` 0); `k`
        [n_kernels, H, >= L] is a precomputed kernel (the ONNX batch graph's constant), else
        it is computed here."""
        channel_major = dim == 0
        x = u if channel_major else u.transpose(1, 2)  # [H, B, L] or [B, H, L]
        length = x.shape[-1]
        k = self.kernel.kernel(length, dtype=x.dtype) if k is None else k[..., :length]
        if channel_major:  # one kernel per channel, broadcast over the batch
            k = k.unsqueeze(2)
        y = causal_conv(x, k[0])
        if self.cfg.bidirectional:
            k_back = F.pad(k[1, ..., :-1], (1, 0))  # lags start at 1: no double-counted u_t
            y = y + causal_conv(x.flip(-1), k_back).flip(-1)
        d = self.kernel.d.to(x.dtype)
        y = y + (d.view(-1, 1, 1) if channel_major else d.unsqueeze(-1)) * x
        return y if channel_major else y.transpose(1, 2)

    def step_parameters(self, dtype: torch.dtype | None = None):
        """(dA, dB, C, D) of the recurrence, computed once and passed to `step`."""
        da, db, _, c = self.kernel.discrete(dtype)
        return da, db, c[0], self.kernel.d.to(dtype or self.kernel.d.dtype)

    def step(self, u: torch.Tensor, state: torch.Tensor, params=None):
        """The recurrent form, one step (as the reference S4 code's `step`): u [B, H], complex
        state x [B, H, M] -> (y [B, H], x'), x' = dA x + dB u, y = 2 Re(C x') + D u.
        `params` from `step_parameters` saves recomputing the discretization every step."""
        if self.cfg.bidirectional:
            raise ValueError("a bidirectional layer has no recurrent step")
        da, db, c, d = params if params is not None else self.step_parameters(u.dtype)
        state = da * state + db * u.unsqueeze(-1)
        return 2 * (c * state).sum(-1).real + d * u, state
