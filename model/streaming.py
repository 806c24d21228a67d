"""The exact recurrent form of a trained network, one frame of T samples at a time.

For one layer with state x (before the frame) and inputs u_0..u_{S-1} (S = T / patch_size):
    y_t = sum_{s<=t} K_{t-s} u_s + 2 Re sum_n C_n dA_n^{t+1} x_n + D u_t
    x'  = dA^S x + sum_s dA^{S-1-s} dB u_s
In real arithmetic (state as real and imaginary parts) both are one linear map of
z = [u, Re x, Im x] per channel, so a frame for B sessions is one batched GEMM per layer,
[H, B, S+N] @ [H, S+N, S+N], with the matrix precomputed in float64 from the frozen
weights. Everything else in a block is position-wise and runs on the frame as a whole.

Long frames are cut into sub-blocks of b steps (as in blocked SSM algorithms): one GEMM maps
every block's inputs to its local outputs and its contribution to the state, a J-step
elementwise scan carries the state across blocks, and one GEMM adds each block's output from
the state it started with. That is b + 2N multiply-adds per step and channel instead of
S + N, and the matrices stay cache-sized. A trailing block shorter than b (frames that b
does not divide, partial last frames) uses slices of the same matrices and dA^r from log dA,
so no frame length ever needs matrices built at run time.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .network import S4DNetwork, run_blocks
from .pooling import pool_frame
from .precision import check_precision, matmul_precision
from .s4d import mode_powers, vandermonde_kernel
from .state import STATE_NAMES, state_bytes_per_session, zero_state


class NotStreamableError(ValueError):
    """The network cannot run as a recurrence (a bidirectional layer sees the future)."""


def frame_matrix(kernel_module, steps: int) -> torch.Tensor:
    """The [H, S+2M, S+2M] float64 map z -> [y, Re x', Im x'] of one layer for S steps."""
    da, db, log_da, c = kernel_module.discrete(torch.float64)
    c = c[0]
    h, m = da.shape
    d = kernel_module.d.detach().to(torch.float64)
    size = steps + 2 * m
    g = torch.zeros(h, size, size, dtype=torch.float64, device=da.device)
    powers = mode_powers(log_da, steps + 1)  # dA^k, k = 0..S: [H, M, S+1]
    kern = vandermonde_kernel(c * db, log_da, steps)  # [H, S]
    ar = torch.arange(steps, device=da.device)
    lag = ar.unsqueeze(1) - ar.unsqueeze(0)  # t - s
    toeplitz = torch.where(lag >= 0, kern[:, lag.clamp(min=0)], torch.zeros((), dtype=kern.dtype))
    toeplitz = toeplitz + torch.diag_embed(d.unsqueeze(-1).expand(h, steps))
    g[:, :steps, :steps] = toeplitz.transpose(1, 2)  # input s -> output t
    w_out = 2 * c.unsqueeze(-1) * powers[..., 1:]  # [H, M, S]: 2 C dA^{t+1}
    g[:, steps : steps + m, :steps] = w_out.real
    g[:, steps + m :, :steps] = -w_out.imag
    w_in = powers[..., :steps].flip(-1) * db.unsqueeze(-1)  # [H, M, S]: dA^{S-1-s} dB
    g[:, :steps, steps : steps + m] = w_in.real.transpose(1, 2)
    g[:, :steps, steps + m :] = w_in.imag.transpose(1, 2)
    carry = powers[..., steps]  # dA^S
    idx = torch.arange(m, device=da.device)
    g[:, steps + idx, steps + idx] = carry.real
    g[:, steps + idx, steps + m + idx] = carry.imag  # Re x -> Im x'
    g[:, steps + m + idx, steps + idx] = -carry.imag  # Im x -> Re x'
    g[:, steps + m + idx, steps + m + idx] = carry.real
    return g


def pooling_head(net: S4DNetwork, h: torch.Tensor, pool: torch.Tensor, count: torch.Tensor):
    """(logits, new pool) after a frame's features h [B, S, H]; `count` already includes S.
    Mean pooling is a running sum, so the prediction after any prefix is the batch one."""
    features, pool = pool_frame(h, pool, count, net.cfg)
    return net.decode(features), pool


def choose_block(steps: int, block_size: int | None) -> int:
    """The sub-block length: the whole frame when it fits one block (or blocking is off),
    else the largest divisor of `steps` <= block_size when a reasonable one exists (no
    trailing short block), else block_size."""
    if not block_size or steps <= block_size:
        return steps
    best = max(d for d in range(1, block_size + 1) if steps % d == 0)
    return best if best >= block_size // 2 else block_size


class StreamingNetwork(nn.Module):
    """A frozen network that consumes frames and carries per-session state exactly."""

    def __init__(
        self,
        network: S4DNetwork,
        frame_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        block_size: int | None = 64,
        precision: str = "fp32",
        fused_core: bool | None = None,
    ):
        super().__init__()
        self.precision = check_precision(precision)
        cfg = network.cfg
        if cfg.bidirectional:
            raise NotStreamableError(
                "this network has bidirectional S4D layers: each output depends on future "
                "samples, so it runs only on whole sequences (REST batch), not as a stream"
            )
        if frame_size < cfg.patch_size or frame_size % cfg.patch_size:
            raise ValueError(
                f"frame_size={frame_size} must be a positive multiple of patch_size={cfg.patch_size}"
            )
        self.cfg = cfg
        self.frame_size = frame_size
        self.steps = frame_size // cfg.patch_size
        device = torch.device(device) if device is not None else next(network.parameters()).device
        net = copy.deepcopy(network).eval().to(device=device, dtype=torch.float64)
        for p in net.parameters():
            p.requires_grad_(False)
        self.block = b = choose_block(self.steps, block_size)
        m = cfg.n_modes
        with torch.no_grad():  # float64 block matrices, then the serving dtype
            g = torch.stack([frame_matrix(blk.s4d.kernel, b) for blk in net.blocks])
            log_da = torch.stack([blk.s4d.kernel.discrete(torch.float64)[2] for blk in net.blocks])
        idx = torch.arange(m, device=g.device)
        carry = torch.stack([g[:, :, b + idx, b + idx], g[:, :, b + idx, b + m + idx]], 1)
        self.register_buffer("block_in", g[:, :, :b, :].to(dtype).contiguous())  # [L, H, b, b+2M]
        self.register_buffer("block_out", g[:, :, b:, :b].to(dtype).contiguous())  # [L, H, 2M, b]
        self.register_buffer("block_carry", carry.to(dtype).contiguous())  # dA^b: [L, 2, H, M]
        # kept in float64: dA^r = exp(r log dA) in float32 drifts by ~1e-5 for r ~ 50
        self.register_buffer("log_da", torch.stack([log_da.real, log_da.imag], 1))
        # a frame of one block also keeps the single full-frame GEMM: cheaper at batch < 4
        self.register_buffer("matrices", (g if b == self.steps else g[:0]).to(dtype))
        # bf16: the sub-block GEMM matrices once in bfloat16 (the carry stays float32)
        low = torch.bfloat16 if precision == "bf16" else dtype
        self.register_buffer("block_in_low", self.block_in.to(low) if low != dtype else g[:0])
        self.register_buffer("block_out_low", self.block_out.to(low) if low != dtype else g[:0])
        self.net = net.to(dtype)
        self._compiled_forward = None
        self.fused_core = self._want_fused_core(fused_core)

    def _want_fused_core(self, wanted: bool | None) -> bool:
        """Whether full frames run the Triton core (model/fused_core.py): by default on CUDA
        in fp32 for frames of one block of at most fused_core.MAX_STEPS steps; True insists
        (an error where it cannot run), False keeps the GEMM form."""
        from . import fused_core

        fits = (self.block == self.steps <= fused_core.MAX_STEPS and self.precision == "fp32"
                and self.block_in.dtype == torch.float32)
        if wanted is None:
            return fits and self.device.type == "cuda" and fused_core.available(self.device)
        if wanted and not (fits and fused_core.available(self.device)):
            raise ValueError(
                f"the fused core needs Triton on this device, float32, precision fp32 and a "
                f"frame of one block of <= {fused_core.MAX_STEPS} steps (steps {self.steps}, "
                f"block {self.block}, precision {self.precision})")
        return bool(wanted)

    def compile(self, **options) -> StreamingNetwork:
        """Run the frame step through `torch.compile` (Inductor: fused Triton kernels on CUDA,
        C++ on CPU): the position-wise tail and the carry scan become a few fused passes over
        the activations instead of dozens of small kernels. The batch dimension is left
        dynamic, so one compilation serves every batch size (and CUDA graphs capture it as
        they capture the eager step); partial frames run the plain step. Same arithmetic up to
        float32 reassociation; compiling takes seconds (GPU) to a minute (CPU) on first use."""
        from .compiled import compile_method

        options.setdefault("fullgraph", True)
        options.setdefault("dynamic", None)  # static first, then dynamic batch on a new size
        # a code object of its own (model/compiled.py): shared by every StreamingNetwork, the
        # fifth shipped model compiled in one process hit Dynamo's recompile limit, and each
        # model's frame length and widths would turn symbolic for the next; so only the batch
        # dimension, the one that changes within an instance, is dynamic.
        self._compiled_forward = compile_method(self, "_forward", **options)
        return self

    def uncompile(self) -> StreamingNetwork:
        self._compiled_forward = None
        return self

    @property
    def compiled(self) -> bool:
        return self._compiled_forward is not None

    @property
    def state_names(self) -> tuple[str, ...]:
        return STATE_NAMES

    @property
    def dtype(self) -> torch.dtype:
        return self.block_in.dtype

    @property
    def device(self) -> torch.device:
        return self.block_in.device

    def zero_state(self, batch: int) -> dict[str, torch.Tensor]:
        return zero_state(self.cfg, batch, self.dtype, self.device)

    @property
    def state_bytes_per_session(self) -> int:
        return state_bytes_per_session(self.cfg, torch.finfo(self.dtype).bits // 8)

    def step(self, frames: torch.Tensor, state: dict[str, torch.Tensor]):
        """(logits, new_state) after one frame [B, T', d_input], T' <= frame_size."""
        logits, *new = self.forward(frames, *(state[n] for n in STATE_NAMES))
        return logits, dict(zip(STATE_NAMES, new, strict=True))

    def forward(self, frames, x_re, x_im, pool, count):
        length = frames.shape[1]
        p = self.cfg.patch_size
        if length < p or length % p or length > self.frame_size:
            raise ValueError(
                f"a frame has {length} samples; it must be a multiple of patch_size={p} "
                f"between {p} and frame_size={self.frame_size}"
            )
        with matmul_precision(self.precision, self.device):
            # full frames only: a partial frame (`end`, `reset`) of a new length would
            # recompile mid-stream; it runs the plain step (the same arithmetic)
            if self._compiled_forward is not None and length == self.frame_size:
                return self._compiled_forward(frames, x_re, x_im, pool, count, fused=True)
            return self._forward(frames, x_re, x_im, pool, count)

    def _forward(self, frames, x_re, x_im, pool, count, fused: bool = False):
        steps = frames.shape[1] // self.cfg.patch_size
        # sub-blocks: separate GEMMs + an elementwise carry (b + 2N MACs per step and channel);
        # a full one-block frame at batch < 4 is faster as the single full-frame GEMM (fp32,
        # and tf32 off CUDA, where it is fp32: that GEMM holds the carry dA^S, which the
        # other modes keep in float32)
        exact_carry = self.precision == "fp32" or (self.precision == "tf32"
                                                   and self.device.type != "cuda")
        # (not when compiled: a branch on the batch size under a dynamic batch dimension, and
        # Inductor failed to lower the single GEMM for the ECG models; measured)
        single_gemm = (not fused and steps == self.steps and self.matrices.numel()
                       and frames.shape[0] < 4 and exact_carry)
        h = self.net.embed(frames.to(self.dtype))  # [B, S, H]
        count = count + steps
        if self.fused_core and not fused and steps == self.steps:
            from .fused_core import frame_core

            # one kernel per layer reads the state and writes the new state in place of a stack
            x_re, x_im = x_re.contiguous(), x_im.contiguous()
            new_re, new_im = torch.empty_like(x_re), torch.empty_like(x_im)
            h = run_blocks(self.net.blocks, h, lambda i, block, u: frame_core(
                u, x_re[:, i], x_im[:, i], new_re[:, i], new_im[:, i], self.block_in[i],
                self.block_out[i], self.block_carry[i]))
            logits, pool = pooling_head(self.net, h, pool, count)
            return logits.to(self.dtype), new_re, new_im, pool, count
        re_parts, im_parts = [], []
        # compiled (`fused`): the activations stay channel-major, [H, B, S], through every
        # block (the S4D core's GEMMs read them as they are); the plain step transposes per layer
        if fused:
            h = h.permute(2, 0, 1).contiguous()

        def core(i, block, u):
            if not fused:
                u = u.permute(2, 0, 1)  # [H, B, S]
            xr, xi = x_re[:, i].transpose(0, 1), x_im[:, i].transpose(0, 1)  # [H, B, M]
            if single_gemm:
                y, xr, xi = self._core_full(self.matrices[i], u, xr, xi)
            else:
                y, xr, xi = self._core_blocked(i, u, xr, xi, fused)
            re_parts.append(xr.transpose(0, 1))
            im_parts.append(xi.transpose(0, 1))
            return y.to(self.dtype) if fused else y.permute(1, 2, 0).to(self.dtype)

        h = run_blocks(self.net.blocks, h, core, dim=0 if fused else -1)
        if fused:
            h = h.permute(1, 2, 0)
        logits, pool = pooling_head(self.net, h, pool, count)
        return (logits.to(self.dtype), torch.stack(re_parts, 1), torch.stack(im_parts, 1), pool,
                count)

    def _core_full(self, g, u, xr, xi):
        """One GEMM: [u, Re x, Im x] @ G -> [y, Re x', Im x'] ([H, B, *])."""
        steps, m = u.shape[-1], self.cfg.n_modes
        out = torch.bmm(torch.cat([u, xr, xi], dim=-1), g)
        return out[..., :steps], out[..., steps : steps + m], out[..., steps + m :]

    def _core_blocked(self, i, u, xr, xi, fused: bool = False):
        """Sub-blocks of b steps: local GEMM, J-step state scan, state-output GEMM; then a
        trailing block of r < b steps from slices of the same matrices.

        `fused` (the torch.compile'd step) writes the same arithmetic for Inductor: the scan's
        block starts are stacked rather than written into slices (the slice writes were a
        kernel each, 14 % of the compiled step on an H200), and the state-output GEMM is a bmm
        whose add joins the next fused pass (baddbmm on a strided input copied the whole
        [H, B, S] activation first, 9 %)."""
        h, batch, steps = u.shape
        b, m = self.block, self.cfg.n_modes
        n_blocks, r = steps // b, steps % b  # (divmod: Dynamo refused it on ints)
        ys = []
        if n_blocks:
            full = (u if r == 0 else u[..., : n_blocks * b]).reshape(h, batch * n_blocks, b)
            low = self.block_in_low.numel() > 0
            if low:  # bf16 operands, float32 results: the carry below stays float32
                local = torch.bmm(full.to(self.block_in_low.dtype), self.block_in_low[i]).to(u.dtype)
            else:
                local = torch.bmm(full, self.block_in[i])  # [H, B*J, b+2M]
            x_in = local[..., b:].reshape(h, batch, n_blocks, 2 * m)
            cr, ci = self.block_carry[i, 0].unsqueeze(1), self.block_carry[i, 1].unsqueeze(1)
            if fused:
                begins = []
                for j in range(n_blocks):
                    begins.append(torch.cat([xr, xi], -1))
                    xr, xi = (x_in[:, :, j, :m] + cr * xr - ci * xi,
                              x_in[:, :, j, m:] + ci * xr + cr * xi)
                starts = torch.stack(begins, 2)
            else:
                starts = u.new_empty(h, batch, n_blocks, 2 * m)
                for j in range(n_blocks):
                    starts[:, :, j, :m] = xr
                    starts[:, :, j, m:] = xi
                    xr, xi = (
                        torch.addcmul(x_in[:, :, j, :m], cr, xr).sub_(ci * xi),
                        torch.addcmul(x_in[:, :, j, m:], ci, xr).add_(cr * xi),
                    )
            starts = starts.view(h, batch * n_blocks, 2 * m)
            if low:
                out = self.block_out_low[i]
                y = local[..., :b] + torch.bmm(starts.to(out.dtype), out).to(u.dtype)
            elif fused:
                y = local[..., :b] + torch.bmm(starts, self.block_out[i])
            else:
                y = torch.baddbmm(local[..., :b], starts, self.block_out[i])
            ys.append(y.reshape(h, batch, n_blocks * b))
        if r:
            # Toeplitz and C dA^{t+1} columns are leading slices; dA^{r-1-s} dB are the last r
            # rows of the input -> state block; the carry dA^r comes from log dA.
            tail = u[..., n_blocks * b :]
            w_in = self.block_in[i]
            y = tail @ w_in[:, :r, :r] + torch.cat([xr, xi], -1) @ self.block_out[i][..., :r]
            x_in = tail @ w_in[:, b - r :, b:]
            mag = torch.exp(r * self.log_da[i, 0])
            cr = (mag * torch.cos(r * self.log_da[i, 1])).to(u.dtype).unsqueeze(1)
            ci = (mag * torch.sin(r * self.log_da[i, 1])).to(u.dtype).unsqueeze(1)
            xr, xi = cr * xr - ci * xi + x_in[..., :m], ci * xr + cr * xi + x_in[..., m:]
            ys.append(y)
        return (ys[0] if len(ys) == 1 else torch.cat(ys, -1)), xr, xi
