"""The exact recurrent form of a trained network, one frame of T samples at a time.

For one layer with state x (before the frame) and inputs u_0..u_{S-1} (S = T / patch_size):
    y_t = sum_{s<=t} K_{t-s} u_s + 2 Re sum_n C_n dA_n^{t+1} x_n + D u_t
    x'  = dA^S x + sum_s dA^{S-1-s} dB u_s
In real arithmetic (state as real and imaginary parts) both are one linear map of
z = [u, Re x, Im x] per channel, so a frame for B sessions is one batched GEMM per layer,
[H, B, S+N] @ [H, S+N, S+N], with the matrix precomputed in float64 from the frozen
weights. Everything else in a block is position-wise and runs on the frame as a whole.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .network import S4DNetwork

STATE_NAMES = ("x_re", "x_im", "pool", "count")


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
    pos = torch.arange(steps + 1, dtype=torch.float64, device=da.device)
    powers = torch.exp(log_da.unsqueeze(-1) * pos)  # dA^k, k = 0..S: [H, M, S+1]
    kern = 2 * torch.einsum("hn,hnl->hl", c * db, powers[..., :steps]).real  # [H, S]
    lag = torch.arange(steps).unsqueeze(1) - torch.arange(steps).unsqueeze(0)  # t - s
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
    idx = torch.arange(m)
    g[:, steps + idx, steps + idx] = carry.real
    g[:, steps + idx, steps + m + idx] = carry.imag  # Re x -> Im x'
    g[:, steps + m + idx, steps + idx] = -carry.imag  # Im x -> Re x'
    g[:, steps + m + idx, steps + m + idx] = carry.real
    return g


class StreamingNetwork(nn.Module):
    """A frozen network that consumes frames and carries per-session state exactly."""

    def __init__(
        self,
        network: S4DNetwork,
        frame_size: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
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
        self._net64 = [net]  # float64 master copy for partial-frame matrices (not a submodule)
        self.net = copy.deepcopy(net).to(dtype)
        self.register_buffer("matrices", self._build(self.steps).to(dtype))
        self._partial: dict[int, torch.Tensor] = {}

    @property
    def state_names(self) -> tuple[str, ...]:
        return STATE_NAMES

    @property
    def dtype(self) -> torch.dtype:
        return self.matrices.dtype

    @property
    def device(self) -> torch.device:
        return self.matrices.device

    def _build(self, steps: int) -> torch.Tensor:
        with torch.no_grad():
            net = self._net64[0]
            return torch.stack([frame_matrix(b.s4d.kernel, steps) for b in net.blocks])

    def _matrices_for(self, steps: int) -> torch.Tensor:
        if steps == self.steps:
            return self.matrices
        if steps not in self._partial:
            if len(self._partial) > 64:
                self._partial.clear()
            self._partial[steps] = self._build(steps).to(self.dtype)
        return self._partial[steps]

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        c = self.cfg
        modes = (batch, c.n_layers, c.d_model, c.n_modes)
        return {"x_re": modes, "x_im": modes, "pool": (batch, c.d_model), "count": (batch, 1)}

    def zero_state(self, batch: int) -> dict[str, torch.Tensor]:
        return {
            name: torch.zeros(shape, dtype=self.dtype, device=self.device)
            for name, shape in self.state_shapes(batch).items()
        }

    @property
    def state_bytes_per_session(self) -> int:
        itemsize = torch.finfo(self.dtype).bits // 8
        return sum(
            itemsize * int(torch.tensor(s[1:]).prod()) for s in self.state_shapes(1).values()
        )

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
        steps = length // p
        mats = self._matrices_for(steps)
        m = self.cfg.n_modes
        h = self.net.embed(frames.to(self.dtype))  # [B, S, H]
        new_re, new_im = [], []
        for i, block in enumerate(self.net.blocks):
            u = block.pre(h).permute(2, 0, 1)  # [H, B, S]
            z = torch.cat([u, x_re[:, i].transpose(0, 1), x_im[:, i].transpose(0, 1)], dim=-1)
            out = torch.bmm(z, mats[i])  # [H, B, S+2M]
            new_re.append(out[..., steps : steps + m].transpose(0, 1))
            new_im.append(out[..., steps + m :].transpose(0, 1))
            h = block.post(h, out[..., :steps].permute(1, 2, 0))
        count = count + steps
        pooling = self.cfg.pooling
        if pooling == "mean":
            pool = pool + h.sum(1)
            logits = self.net.decoder(pool / count)
        elif pooling == "last":
            pool = h[:, -1]
            logits = self.net.decoder(pool)
        else:
            logits = self.net.decoder(h)
        return logits, torch.stack(new_re, 1), torch.stack(new_im, 1), pool, count
