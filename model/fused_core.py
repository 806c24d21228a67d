"""The S4D core of a one-block frame as one Triton kernel per layer (CUDA, float32).

For the shipped keyword models a 20 ms frame is S = 2 steps, and the blocked GEMM form of
`model/streaming.py` spends its time on layout, not arithmetic: per layer two batched GEMMs
with an inner or outer dimension of 2, the state transposed to [H, B, M] and back, a dozen
strided elementwise passes, and a stack of the layers' states (3.2 ms at 1,456 sessions on an
H200, where one read and one write of the state would take ~0.2 ms). Here one program handles
a tile of sessions x channels x modes: it reads the layer's state once, writes the new state
once, and writes y [B, S, H] in the layout the block's tail reads. The matrices are the
streaming network's own float64-built `block_in`, `block_out` and `block_carry`; the sums run
in float32 FMAs, so the result equals the GEMM form up to float32 reassociation.

Used for frames of one block of at most `MAX_STEPS` steps (longer frames have a Toeplitz part
that wants tensor-core GEMMs: the GEMM form serves them). `model/streaming.py` stays the
reference; tests/test_fused_core.py checks this kernel against it (Triton's interpreter on a
CPU, the compiled kernel on a GPU).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the GEMM form serves
    triton = None

MAX_STEPS = 16


def available(device: torch.device) -> bool:
    """Triton is importable and can run on `device` (CUDA, or any device under Triton's
    interpreter, TRITON_INTERPRET=1, which the tests use on CPU machines)."""
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _frame_core(u_ptr, su_b, su_s, x_re, x_im, sx_b, o_re, o_im, so_b, y_ptr, sy_b, sy_s,
                    w_in, w_out, carry, B, H,
                    S: tl.constexpr, M: tl.constexpr, BM: tl.constexpr, BB: tl.constexpr,
                    BH: tl.constexpr):
        """One tile [BB sessions, BH channels, BM modes] of one layer's frame:
        x' = dA^S x + sum_s w_in[s, S:] u_s,  y_t = sum_{s<=t} w_in[s, t] u_s + w_out[:, t] . x
        (u, y: [B, S, H] with unit channel stride; x, x': [B, H, M], contiguous rows)."""
        ob = tl.program_id(0) * BB + tl.arange(0, BB)
        oh = tl.program_id(1) * BH + tl.arange(0, BH)
        om = tl.arange(0, BM)
        bh_mask = (ob < B)[:, None] & (oh < H)[None, :]
        hm = oh[:, None] * M + om[None, :]  # offsets into an [H, M] table
        hm_mask = (oh < H)[:, None] & (om < M)[None, :]
        mask3 = bh_mask[:, :, None] & (om < M)[None, None, :]
        b3 = ob[:, None, None]
        xr = tl.load(x_re + b3 * sx_b + hm[None, :, :], mask=mask3, other=0.0)
        xi = tl.load(x_im + b3 * sx_b + hm[None, :, :], mask=mask3, other=0.0)
        cr = tl.load(carry + hm, mask=hm_mask, other=0.0)[None, :, :]
        ci = tl.load(carry + H * M + hm, mask=hm_mask, other=0.0)[None, :, :]
        nr = cr * xr - ci * xi
        ni = ci * xr + cr * xi
        width: tl.constexpr = S + 2 * M  # a row of w_in: [y_0..y_{S-1}, Re x', Im x']
        row = oh[:, None] * (S * width) + om[None, :]
        u_at = ob[:, None] * su_b + oh[None, :]
        for s in tl.static_range(S):
            us = tl.load(u_ptr + u_at + s * su_s, mask=bh_mask, other=0.0)[:, :, None]
            nr += us * tl.load(w_in + row + s * width + S, mask=hm_mask, other=0.0)[None, :, :]
            ni += us * tl.load(w_in + row + s * width + S + M, mask=hm_mask,
                               other=0.0)[None, :, :]
        o_at = b3 * so_b + hm[None, :, :]
        tl.store(o_re + o_at, nr, mask=mask3)
        tl.store(o_im + o_at, ni, mask=mask3)
        out_row = oh[:, None] * (2 * M * S) + om[None, :] * S
        for t in tl.static_range(S):
            wr = tl.load(w_out + out_row + t, mask=hm_mask, other=0.0)[None, :, :]
            wi = tl.load(w_out + out_row + M * S + t, mask=hm_mask, other=0.0)[None, :, :]
            y = tl.sum(xr * wr + xi * wi, axis=2)  # [BB, BH]
            for s in tl.static_range(t + 1):  # causal Toeplitz (and D on the diagonal)
                k = tl.load(w_in + oh * (S * width) + s * width + t, mask=oh < H, other=0.0)
                y += tl.load(u_ptr + u_at + s * su_s, mask=bh_mask, other=0.0) * k[None, :]
            tl.store(y_ptr + ob[:, None] * sy_b + t * sy_s + oh[None, :], y, mask=bh_mask)


def frame_core(u: torch.Tensor, x_re: torch.Tensor, x_im: torch.Tensor, out_re: torch.Tensor,
               out_im: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor,
               carry: torch.Tensor) -> torch.Tensor:
    """y [B, S, H] of one layer for u [B, S, H]; writes the new state into out_re / out_im.
    x_*, out_*: [B, H, M] views (rows contiguous, e.g. state[:, layer]); w_in [H, S, S+2M],
    w_out [H, 2M, S], carry [2, H, M] (the layer's block_in / block_out / block_carry)."""
    b, s, h = u.shape
    m = x_re.shape[-1]
    if u.stride(2) != 1:
        u = u.contiguous()
    for t in (x_re, x_im, out_re, out_im):
        if t.stride(2) != 1 or t.stride(1) != m:
            raise ValueError("state views must have contiguous [H, M] rows")
    if x_re.stride(0) != x_im.stride(0) or out_re.stride(0) != out_im.stride(0):
        raise ValueError("the real and imaginary state views must share their batch stride")
    y = torch.empty((b, s, h), dtype=u.dtype, device=u.device)
    bm = triton.next_power_of_2(m)
    bb = 16
    bh = max(1, min(16, 8192 // (bb * bm)))  # ~8k lanes per program
    grid = (triton.cdiv(b, bb), triton.cdiv(h, bh))
    _frame_core[grid](u, u.stride(0), u.stride(1), x_re, x_im, x_re.stride(0), out_re, out_im,
                      out_re.stride(0), y, y.stride(0), y.stride(1), w_in, w_out, carry, b, h,
                      S=s, M=m, BM=bm, BB=bb, BH=bh, num_warps=8)
    return y
