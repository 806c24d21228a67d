"""The deep S4D classifier: encoder -> n x [norm, S4D, GELU, dropout, linear+GLU, residual]
-> pooling -> decoder. Everything but the S4D core is position-wise, which is what makes the
exact chunked streaming form (model/streaming.py) possible."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .frontend import LogMelPatches
from .pooling import pool_sequence, valid_mask
from .precision import float32_region
from .s4d import S4D, causal_conv


class S4DBlock(nn.Module):
    """One residual block; the pieces are exposed so the streaming form reuses them."""

    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        h = cfg.d_model
        self.norm = nn.LayerNorm(h) if cfg.norm == "layer" else nn.Identity()
        self.s4d = S4D(cfg, generator)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output_linear = nn.Linear(h, 2 * h)

    def pre(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return self._norm(x, dim) if self.cfg.prenorm else x

    def post(self, x: torch.Tensor, y: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Everything after the S4D core: GELU, dropout, linear + GLU, dropout, residual."""
        z = self.dropout(F.gelu(y))
        z = self.dropout(self._glu_linear(z, dim))
        x = x + z
        return x if self.cfg.prenorm else self._norm(x, dim)

    # The channels are the last dimension (dim -1) everywhere but in the compiled streaming
    # step, which keeps its activations channel-major ([H, B, S], dim 0): the S4D core's
    # per-channel GEMMs read that layout without a transpose, and the linear is one GEMM.
    def _norm(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if dim == -1 or not isinstance(self.norm, nn.LayerNorm):
            return self.norm(x)
        shape = (-1,) + (1,) * (x.dim() - 1)
        mean = x.mean(0, keepdim=True)
        var = (x - mean).square().mean(0, keepdim=True)
        scaled = (x - mean) * torch.rsqrt(var + self.norm.eps)
        return scaled * self.norm.weight.view(shape) + self.norm.bias.view(shape)

    def _glu_linear(self, z: torch.Tensor, dim: int) -> torch.Tensor:
        if dim == -1:
            return F.glu(self.output_linear(z), dim=-1)
        # one GEMM; the biases join the GLU's pass, added to each half (as mm + bias, Inductor
        # makes it an addmm, which first copies the broadcast bias into the whole output)
        w, bias, h = self.output_linear.weight, self.output_linear.bias, z.shape[0]
        out = torch.mm(w, z.reshape(h, -1)).view(2 * h, *z.shape[1:])
        shape = (-1,) + (1,) * (z.dim() - 1)
        return (out[:h] + bias[:h].view(shape)) * torch.sigmoid(out[h:] + bias[h:].view(shape))

    def conv(self, u: torch.Tensor, mask: torch.Tensor | None = None,
             k: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
        """The S4D core in convolution form (batch paths); `k` a precomputed kernel; `dim`
        where the channels are (-1: [B, L, H]; 0: channel-major [H, B, L])."""
        if mask is not None and self.cfg.bidirectional:
            u = u * mask  # padding must not leak backwards in time
        return self.s4d(u, k, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.post(x, self.conv(self.pre(x), mask))


def run_blocks(blocks, h: torch.Tensor, core, dim: int = -1) -> torch.Tensor:
    """The residual block loop of every form of the network (batch convolution, chunked frame
    step, per-sample recurrence, both ONNX graphs): per block, pre (norm) -> S4D core ->
    post (GELU, GLU, residual, norm). `core(i, block, u)` is the form's S4D core; a form
    with state keeps it in the closure. `dim` is where the channels are (-1, or 0:
    channel-major activations)."""
    for i, block in enumerate(blocks):
        h = block.post(h, core(i, block, block.pre(h, dim)), dim)
    return h


class S4DNetwork(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int | None = 0):
        super().__init__()
        if seed is None:
            self._build(cfg, None)
        else:  # the same seed gives the same weights, whatever the global RNG did before
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(cfg, torch.Generator().manual_seed(seed))

    def _build(self, cfg: ModelConfig, gen: torch.Generator | None) -> None:
        self.cfg = cfg
        d_in = cfg.d_input
        mean = torch.tensor(cfg.input_mean or [0.0] * d_in, dtype=torch.float32)
        std = torch.tensor(cfg.input_std or [1.0] * d_in, dtype=torch.float32)
        self.register_buffer("input_mean", mean)
        self.register_buffer("input_std", std)
        self.frontend = None
        if cfg.front_end == "logmel":
            self.frontend = LogMelPatches(cfg.patch_size, cfg.sample_rate, cfg.n_mels,
                                          cfg.feature_mean, cfg.feature_std)
        width = cfg.n_mels if self.frontend is not None else d_in * cfg.patch_size
        self.encoder = nn.Linear(width, cfg.d_model)
        self.blocks = nn.ModuleList([S4DBlock(cfg, gen) for _ in range(cfg.n_layers)])
        self.decoder = nn.Linear(cfg.d_model, cfg.d_output)

    def ssm_parameters(self) -> list[nn.Parameter]:
        return [p for b in self.blocks for p in b.s4d.kernel.ssm_parameters()]

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: the SSM parameters get their own lr and no weight decay (as in S4D)."""
        ssm = {id(p) for p in self.ssm_parameters()}
        rest = [p for p in self.parameters() if id(p) not in ssm and p.requires_grad]
        decay = [p for p in rest if p.ndim >= 2]
        no_decay = [p for p in rest if p.ndim < 2]
        return [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
            {"params": self.ssm_parameters(), "lr": self.cfg.lr_ssm, "weight_decay": 0.0},
        ]

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize and fold: [B, L, d_in] -> [B, L // p, p * d_in]."""
        p = self.cfg.patch_size
        x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        b, length, c = x.shape
        steps = length // p
        return x[:, : steps * p].reshape(b, steps, p * c)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patches through the front end and the encoder: [B, L, d_in] -> [B, L // p, H]."""
        x = self.patches(x)
        with float32_region(x.device.type):  # raw input samples: never bfloat16
            if self.frontend is not None:
                x = self.frontend(x)
            return self.encoder(x)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """The decoder (logits), in the input's precision even under bf16 autocast."""
        with float32_region(features.device.type):
            return self.decoder(features)

    def kernels(self, max_steps: int) -> list[torch.Tensor]:
        """Every layer's S4D kernel up to `max_steps` lags, for `forward(..., kernels=)`. For
        fixed weights (a served model): at a few hundred steps computing them costs a CPU more
        than the rest of the forward, and K_l does not depend on the length asked for."""
        with torch.no_grad():
            return [block.s4d.kernel.kernel(max_steps) for block in self.blocks]

    def features(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                 kernels: list[torch.Tensor] | None = None,
                 channel_major: bool = False) -> torch.Tensor:
        """Per-step features after the last block, [B, steps, H]. `kernels` (from `kernels`)
        are used where they are long enough, else each layer computes its own.
        `channel_major` (the compiled forward) runs the blocks on [H, B, steps]: the FFTs
        along the contiguous last dimension, each linear one GEMM, no transposes per layer."""
        h = self.embed(x)
        mask = None
        if lengths is not None:
            steps = torch.div(lengths, self.cfg.patch_size, rounding_mode="floor")
            mask = valid_mask(steps.to(h.device), h.shape[1], h.dtype)
        if kernels is not None and any(k.shape[-1] < h.shape[1] for k in kernels):
            kernels = None
        dim = 0 if channel_major else -1
        if channel_major:
            h = h.permute(2, 0, 1).contiguous()
            mask = None if mask is None else mask.permute(2, 0, 1)  # [1, B, steps]
        h = run_blocks(self.blocks, h, lambda i, block, u: block.conv(
            u, mask, None if kernels is None else kernels[i], dim), dim)
        return h.permute(1, 2, 0) if channel_major else h

    def _features_channel_major(self, x, lengths=None, kernels=None):
        return self.features(x, lengths, kernels, channel_major=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                kernels: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits [B, classes] (mean/last/ema pooling) or [B, steps, classes] (pooling none)."""
        return self.head(self.features(x, lengths, kernels), lengths)

    def head(self, h: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Pooling and the decoder on per-step features `h` (what `forward` does after
        `features`; training with an auxiliary per-step loss reuses the same `h`)."""
        pooling = self.cfg.pooling
        if pooling == "none":
            return self.decode(h)
        steps = h.shape[1]
        if lengths is None:
            n_valid = torch.full((h.shape[0],), steps, device=h.device, dtype=torch.long)
        else:
            n_valid = torch.div(lengths.to(h.device), self.cfg.patch_size, rounding_mode="floor")
        if torch.any(n_valid < 1):
            raise ValueError(f"every sequence needs at least patch_size={self.cfg.patch_size} samples")
        pooled = pool_sequence(h, n_valid, self.cfg)
        return self.decode(pooled)

    def prefix_logits(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                      kernels: list[torch.Tensor] | None = None) -> torch.Tensor:
        """[B, steps, classes]: row t is the logits of the prediction after the first t + 1
        steps, what a stream reports after that many steps (pooling none: the per-step logits).
        Rows past a sequence's length are padding. Used to train on per-step targets and for
        events on the batch path.

        The decoder is affine and every pooling's weights sum to one, so pooling the per-step
        logits equals decoding the pooled features: mean is a cumulative mean, ema a causal
        convolution with (1 - a) a^k (FFT, as the S4D kernel), bias-corrected by 1 - a^(t+1)."""
        return self.prefix_head(self.features(x, lengths, kernels))

    def prefix_head(self, h: torch.Tensor) -> torch.Tensor:
        """`prefix_logits` from per-step features `h` [B, steps, H] (`features`' output)."""
        z = self.decoder(h)
        pooling, steps = self.cfg.pooling, z.shape[1]
        if pooling in ("none", "last"):
            return z
        t = torch.arange(1, steps + 1, device=z.device, dtype=torch.float64)
        if pooling == "mean":
            return z.cumsum(1) / t.to(z.dtype).view(1, -1, 1)
        log_a = self.cfg.ema_log_decay
        kernel = (torch.exp((t - 1) * log_a) * -math.expm1(log_a)).to(z.dtype)  # (1 - a) a^k
        p = causal_conv(z, kernel, dim=1)
        return p / (-torch.expm1(t * log_a)).to(z.dtype).view(1, -1, 1)

    def compiled_features(self, **options):
        """`features` (channel-major) through `torch.compile` (Inductor fuses the layer norms,
        GELU / GLU and residuals around the FFTs and GEMMs: 1.6x at batch 64 on an H200,
        bench/RESULTS.md), with dynamic shapes by default: one graph serves every batch and
        length (sizes 1 compile apart). Under symbolic lengths the FFT is 2L long
        (`causal_conv`), so callers pad the steps to a smooth count (the torch backend: a
        multiple of 16 with a smooth double, `compiled_steps`). Same arithmetic up to float32
        reassociation."""
        from .compiled import compile_method

        options.setdefault("dynamic", True)
        return compile_method(self, "_features_channel_major", **options)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
