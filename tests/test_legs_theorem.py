"""The paper's theorem, checked without data: as N grows, the S4D-LegS kernel (diagonal,
normal part of HiPPO-LegS, B/2) converges to the S4-LegS kernel (the full HiPPO-LegS
matrix, computed here independently by a dense matrix exponential in float64)."""

import numpy as np
import torch
from scipy.linalg import expm

from model.s4d import causal_conv, discretize, legs_normal_eig, vandermonde_kernel

T, STEPS, N_COORDS = 4.0, 400, 8


def hippo_legs_independent(n):
    a = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i > j:
                a[i, j] = -np.sqrt((2 * i + 1) * (2 * j + 1))
            elif i == j:
                a[i, j] = -(i + 1)
    return a, np.sqrt(2 * np.arange(n) + 1.0)


def full_legs_response(n, u, dt):
    a, b = hippo_legs_independent(n)
    e = expm(a * dt)
    f = np.linalg.solve(a, e - np.eye(n)) @ b  # ZOH
    x = np.zeros(n)
    out = []
    for v in u:
        x = e @ x + f * v
        out.append(x[:N_COORDS].copy())
    return np.array(out)  # [L, coords]


def diagonal_legs_response(n, u, dt):
    lam, vb, v = legs_normal_eig(n, return_vectors=True)
    lam = torch.as_tensor(lam).unsqueeze(0)
    b = torch.as_tensor(vb).unsqueeze(0)
    da, db, log_da = discretize(torch.tensor([dt], dtype=torch.float64), lam, b, "zoh")
    c = torch.as_tensor(v[:N_COORDS])  # read out coordinate k: C_n = e_k^T V
    k = vandermonde_kernel(c * db, log_da.expand(N_COORDS, -1), len(u))  # [coords, L]
    y = causal_conv(torch.as_tensor(u).expand(N_COORDS, -1), k)
    return y.T.numpy()


def test_s4d_legs_kernel_converges_to_s4_legs():
    dt = T / STEPS
    t = np.arange(STEPS) * dt
    u = np.sin(2 * t) * np.exp(-t / 2)
    rows = []
    for n in (16, 64, 256, 1024):
        full = full_legs_response(n, u, dt)
        diag = diagonal_legs_response(n, u, dt)
        rows.append((n, np.abs(full - diag).max() / np.abs(full).max()))
    print("\n  N     rel. error S4D-LegS vs S4-LegS (first 8 basis functions, smooth input)")
    for n, err in rows:
        print(f"  {n:5d} {err:.3e}")
    errors = [e for _, e in rows]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3
