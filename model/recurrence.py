"""The classical recurrent step, one sample (step) at a time: the simple reference that
tests and benchmarks compare the chunked form against.

x_t = dA * x_{t-1} + dB * u_t,   y_t = 2 Re(C . x_t) + D u_t   (complex state per channel)
"""

from __future__ import annotations

import copy

import torch

from .network import S4DNetwork, run_blocks
from .pooling import pool_frame
from .streaming import NotStreamableError


class PerSampleStepper:
    """Steps a frozen network step by step; state is complex [B, layers, H, M] + pooling."""

    def __init__(self, network: S4DNetwork, dtype: torch.dtype = torch.float64, device=None):
        if network.cfg.bidirectional:
            raise NotStreamableError("bidirectional networks have no recurrent form")
        self.cfg = network.cfg
        device = device or next(network.parameters()).device
        self.net = copy.deepcopy(network).eval().to(device=device, dtype=dtype)
        self.dtype = dtype
        with torch.no_grad():  # (dA, dB, C, D) per layer, once
            self.params = [b.s4d.step_parameters(dtype) for b in self.net.blocks]

    def zero_state(self, batch: int) -> dict[str, torch.Tensor]:
        c = self.cfg
        da = self.params[0][0]
        dev = da.device
        return {
            "x": torch.zeros(batch, c.n_layers, c.d_model, c.n_modes, dtype=da.dtype, device=dev),
            "pool": torch.zeros(batch, c.d_model, dtype=self.dtype, device=dev),
            "count": torch.zeros(batch, 1, dtype=self.dtype, device=dev),
        }

    @torch.no_grad()
    def step(self, frames: torch.Tensor, state: dict[str, torch.Tensor]):
        """Same contract as StreamingNetwork.step, computed one step at a time."""
        h_all = self.net.embed(frames.to(self.dtype))  # [B, S, H]
        x = state["x"].clone()
        pool, count = state["pool"], state["count"]
        outs = []

        def core(i, block, u):  # x: the modes of every layer, updated in place
            y, x[:, i] = block.s4d.step(u, x[:, i], self.params[i])
            return y

        for t in range(h_all.shape[1]):
            h = run_blocks(self.net.blocks, h_all[:, t], core)
            count = count + 1
            features, pool = pool_frame(h.unsqueeze(1), pool, count, self.cfg)
            outs.append(features)
        if self.cfg.pooling == "none":
            logits = self.net.decode(torch.cat(outs, 1))
        else:
            logits = self.net.decode(features)
        return logits, {"x": x, "pool": pool, "count": count}
