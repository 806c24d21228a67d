"""The batch FFT path (`S4DNetwork.forward`, what REST /predict runs) by FFT length and layout.

Variants of the S4D convolution, each swapped into the same network in the same process:

- `before`: the path before 2026-11-28: FFT length 2L on [B, H, L] and the kernel's L x M
  complex exponentials (an odd clip's 2L can have a large prime factor, 2 x 16001, which FFT
  libraries handle with Bluestein's algorithm).
- `fast` (the model's path): length `fft_size(2L - 1)`, the next 2^a 3^b 5^c 7^d, and the
  blocked Vandermonde kernel (`kernel_block`).
- `direct`: `fast` with the unblocked kernel (what the blocked kernel alone is worth).
- `pow2`: the next power of two >= 2L - 1 (blocked kernel).
- `dim1`: `fast`, transformed along the time axis of [B, L, H] in place (no transposes).
- `kept`: `fast` with the kernels computed beforehand (`S4DNetwork.kernels`), as the torch
  backend serves REST forwards.
- `compiled`: `kept` through `torch.compile` (Inductor fuses the layer norms, transposes,
  GELU / GLU and residuals around the FFTs and GEMMs), one graph per shape;
  `compiled-dyn`: the same with dynamic shapes (one graph for every batch and length, what a
  server needs); `compiled-max`: per shape, mode max-autotune-no-cudagraphs;
  `compiled-cm`: `compiled-dyn` with the blocks channel-major ([H, B, L]: FFTs along the
  contiguous axis, each linear one GEMM), what `--compile-batch` serves.

For each device, variant, clip length (1 s = 16,000 samples and one sample more) and batch:
ms per forward and clips/s (`bench.core.timeit`: median after a warm-up), and the largest
relative difference from the float64 forward of the model's path.

    python -m bench.batch_fft --device cuda --out DIR     # --smoke: small sizes, CPU-quick
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

import model.s4d as s4d
from bench.core import sync, timeit
from model.config import ModelConfig
from model.network import S4DNetwork
from model.precision import matmul_precision

VARIANTS = ("before", "fast", "direct", "pow2", "dim1", "kept", "compiled", "compiled-dyn",
            "compiled-cm", "compiled-max")
COMPILE_OPTIONS = {"compiled": {"dynamic": False}, "compiled-dyn": {"dynamic": True},
                   "compiled-cm": {"dynamic": True},
                   "compiled-max": {"dynamic": False, "mode": "max-autotune-no-cudagraphs"}}
FAST_CONV = s4d.causal_conv
FAST_FORWARD = s4d.S4D.forward
FAST_BLOCK = s4d.kernel_block


def _conv_with(length_of):
    def conv(u, k, dim=-1):
        length = u.shape[-1]
        n = length_of(length)
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
        return y[..., :length]
    return conv


def _forward_dim1(self, u, k=None, dim=-1):
    """The S4D core on [B, L, H] with the FFT along L (no transposes); unidirectional."""
    length = u.shape[1]
    k = self.kernel.kernel(length, dtype=u.dtype) if k is None else k[..., :length]
    n = s4d.fft_size(2 * length - 1)
    k_f = torch.fft.rfft(k[0], n=n).transpose(0, 1)  # [F, H]
    y = torch.fft.irfft(torch.fft.rfft(u, n=n, dim=1) * k_f, n=n, dim=1)[:, :length]
    return y + self.kernel.d.to(u.dtype) * u


@contextmanager
def variant(name: str):
    conv, forward, block = FAST_CONV, FAST_FORWARD, FAST_BLOCK
    if name == "before":
        conv, block = _conv_with(lambda length: 2 * length), (lambda length, device_type="cpu": None)
    elif name == "direct":
        block = lambda length, device_type="cpu": None  # noqa: E731
    elif name == "pow2":
        conv = _conv_with(lambda length: 1 << (2 * length - 2).bit_length())
    elif name == "dim1":
        forward = _forward_dim1
    s4d.causal_conv, s4d.S4D.forward, s4d.kernel_block = conv, forward, block
    try:
        yield
    finally:
        s4d.causal_conv, s4d.S4D.forward, s4d.kernel_block = FAST_CONV, FAST_FORWARD, FAST_BLOCK


def design_cfg(smoke: bool) -> ModelConfig:
    """The DESIGN network (issue 10's): H=128, N=64, 4 layers, patch 1."""
    h, n, layers = (16, 8, 2) if smoke else (128, 64, 4)
    return ModelConfig(d_input=1, d_model=h, d_state=n, n_layers=layers, d_output=12,
                       pooling="mean")


def load(args, device: torch.device) -> tuple[S4DNetwork, S4DNetwork]:
    """The network in float32 and float64: a checkpoint's, or the DESIGN network's."""
    if args.checkpoint:
        from model.checkpoint import load_checkpoint

        net = load_checkpoint(args.checkpoint, device=device)[0]
    else:
        net = S4DNetwork(design_cfg(args.smoke), seed=0).to(device)
    return net.eval(), copy.deepcopy(net).double().eval()


def forward_of(name: str, net: S4DNetwork):
    """The callable a variant times: the network's forward, or its compiled form."""
    if name not in COMPILE_OPTIONS:
        return net
    torch._dynamo.reset()  # every compiled variant starts from an empty cache
    if name == "compiled-cm":
        return torch.compile(lambda x, kernels=None: net.head(
            net.features(x, None, kernels, channel_major=True)), **COMPILE_OPTIONS[name])
    return torch.compile(net.forward, **COMPILE_OPTIONS[name])


def run(args) -> dict:
    device = torch.device(args.device)
    net, net64 = load(args, device)
    cfg = net.cfg
    gen = torch.Generator().manual_seed(0)
    rows = []
    for clip in args.clips:
        x = 0.1 * torch.randn(max(args.batches), clip, cfg.d_input, generator=gen).to(device)
        with torch.inference_mode():
            ref = net64(x.double())
        steps = clip // cfg.patch_size
        for name in args.variants:
            with variant(name), torch.inference_mode(), matmul_precision(args.precision, device):
                keep = name == "kept" or name in COMPILE_OPTIONS
                kernels = net.kernels(steps) if keep else None
                fn = forward_of(name, net)
                for b in args.batches:
                    xb = x[:b]
                    t0 = time.perf_counter()
                    out = fn(xb, kernels=kernels).double()
                    sync(device)
                    first_s = time.perf_counter() - t0
                    err = float((out - ref[:b]).abs().max() / ref[:b].abs().max())
                    t = timeit(lambda xb=xb, ks=kernels, fn=fn: fn(xb, kernels=ks), device,
                               min_time=args.min_time)
                    rows.append({"variant": name, "clip": clip, "batch": b, "ms": t * 1e3,
                                 "clips_per_s": b / t, "rel_err_vs_f64": err,
                                 "first_call_s": first_s,
                                 "fft_length": {"before": 2 * steps, "pow2": 1 << (2 * steps - 2).bit_length(),
                                                "compiled-dyn": 2 * steps,
                                                "compiled-cm": 2 * steps}
                                 .get(name, s4d.fft_size(2 * steps - 1))})
                    print(json.dumps(rows[-1]), flush=True)
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "precision": args.precision, "checkpoint": str(args.checkpoint or "DESIGN network"),
            "network": f"H={cfg.d_model} N={cfg.d_state} layers={cfg.n_layers} patch {cfg.patch_size}",
            "rows": rows}


def table(result: dict) -> str:
    """One markdown row per (clip, batch): ms and clips/s of every variant."""
    variants = list(dict.fromkeys(r["variant"] for r in result["rows"]))
    by = {(r["clip"], r["batch"], r["variant"]): r for r in result["rows"]}
    keys = sorted({(r["clip"], r["batch"]) for r in result["rows"]})
    lines = ["| clip (samples) | batch | " + " | ".join(f"{v}: ms (clips/s)" for v in variants) + " |",
             "| ---: | ---: | " + " | ".join("---:" for _ in variants) + " |"]
    for clip, b in keys:
        cells = [f"{by[clip, b, v]['ms']:.2f} ({by[clip, b, v]['clips_per_s']:,.0f})"
                 for v in variants if (clip, b, v) in by]
        lines.append(f"| {clip:,} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile(args) -> None:
    """torch.profiler's operator table of `--profile-variant` (default: the served path,
    kept kernels) at the largest clip and batch."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = torch.device(args.device)
    net = load(args, device)[0]
    x = torch.randn(max(args.batches), max(args.clips), net.cfg.d_input, device=device)
    kernels = net.kernels(x.shape[1] // net.cfg.patch_size)
    fn = forward_of(args.profile_variant, net)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        fn(x, kernels=kernels)
        sync(device)
        with torch_profile(activities=activities) as prof:
            for _ in range(3):
                fn(x, kernels=kernels)
            sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS,
                    default=[v for v in VARIANTS if v not in COMPILE_OPTIONS],
                    help="default: every variant but the compiled ones (seconds of compiling each)")
    ap.add_argument("--clips", type=int, nargs="+", default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                    help="matmul precision (model/precision.py), as `s4d serve --precision`")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="a checkpoint directory instead of the DESIGN network (H=128, N=64, 4 layers, patch 1)")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's table")
    ap.add_argument("--profile-variant", default="kept", choices=("kept", *COMPILE_OPTIONS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.clips = args.clips or ([200, 201] if args.smoke else [16000, 16001])
    args.batches = args.batches or ([1, 4] if args.smoke else [1, 16, 64])
    result = run(args)
    print(table(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "batch_fft.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.profile:
        profile(args)
    # float32 FFTs over 32,000 points: ~1.6e-5 of the output's range on cuFFT whatever the length
    bad = [r for r in result["rows"] if r["rel_err_vs_f64"] > 5e-5]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
