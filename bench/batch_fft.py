"""The batch FFT path (`S4DNetwork.forward`, what REST /predict runs) by FFT length and layout.

Variants of the S4D convolution, each swapped into the same network in the same process:

- `2L`: FFT length 2L on [B, H, L] (the path before `fft_size`): an odd clip's 2L can have a
  large prime factor (2 x 16001), which FFT libraries handle with Bluestein's algorithm.
- `fast` (the model's path): length `fft_size(2L - 1)`, the next 2^a 3^b 5^c 7^d.
- `pow2`: the next power of two >= 2L - 1.
- `dim1`: `fast`, transformed along the time axis of [B, L, H] in place (no transposes).

For each device, variant, clip length (1 s = 16,000 samples and one sample more) and batch:
ms per forward and clips/s (`bench.core.timeit`: median after a warm-up), and the largest
relative difference from the float64 forward of the model's path.

    python -m bench.batch_fft --device cuda --out DIR     # --smoke: small sizes, CPU-quick
"""

from __future__ import annotations

import argparse
import json
import platform
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

import model.s4d as s4d
from bench.core import timeit
from model.config import ModelConfig
from model.network import S4DNetwork

VARIANTS = ("2L", "fast", "pow2", "dim1")
FAST_CONV = s4d.causal_conv
FAST_FORWARD = s4d.S4D.forward


def _conv_with(length_of):
    def conv(u, k, dim=-1):
        length = u.shape[-1]
        n = length_of(length)
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
        return y[..., :length]
    return conv


def _forward_dim1(self, u, k=None):
    """The S4D core on [B, L, H] with the FFT along L (no transposes); unidirectional."""
    length = u.shape[1]
    k = self.kernel.kernel(length, dtype=u.dtype) if k is None else k[..., :length]
    n = s4d.fft_size(2 * length - 1)
    k_f = torch.fft.rfft(k[0], n=n).transpose(0, 1)  # [F, H]
    y = torch.fft.irfft(torch.fft.rfft(u, n=n, dim=1) * k_f, n=n, dim=1)[:, :length]
    return y + self.kernel.d.to(u.dtype) * u


@contextmanager
def variant(name: str):
    conv, forward = FAST_CONV, FAST_FORWARD
    if name == "2L":
        conv = _conv_with(lambda length: 2 * length)
    elif name == "pow2":
        conv = _conv_with(lambda length: 1 << (2 * length - 2).bit_length())
    elif name == "dim1":
        forward = _forward_dim1
    s4d.causal_conv, s4d.S4D.forward = conv, forward
    try:
        yield
    finally:
        s4d.causal_conv, s4d.S4D.forward = FAST_CONV, FAST_FORWARD


def design_cfg(smoke: bool) -> ModelConfig:
    """The DESIGN network (issue 10's): H=128, N=64, 4 layers, patch 1."""
    h, n, layers = (16, 8, 2) if smoke else (128, 64, 4)
    return ModelConfig(d_input=1, d_model=h, d_state=n, n_layers=layers, d_output=12,
                       pooling="mean")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args) -> dict:
    device = torch.device(args.device)
    cfg = design_cfg(args.smoke)
    net = S4DNetwork(cfg, seed=0).eval().to(device)
    net64 = S4DNetwork(cfg, seed=0).double().eval().to(device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for clip in args.clips:
        x = torch.randn(max(args.batches), clip, 1, generator=gen).to(device)
        with torch.inference_mode():
            ref = net64(x[:2].double())
        for name in args.variants:
            with variant(name), torch.inference_mode():
                out = net(x[:2]).double()
                err = float((out - ref).abs().max() / ref.abs().max())
                for b in args.batches:
                    xb = x[:b]
                    t = timeit(lambda xb=xb: net(xb), device, min_time=args.min_time)
                    rows.append({"variant": name, "clip": clip, "batch": b, "ms": t * 1e3,
                                 "clips_per_s": b / t, "rel_err_vs_f64": err,
                                 "fft_length": {"2L": 2 * clip, "pow2": 1 << (2 * clip - 2).bit_length()}
                                 .get(name, s4d.fft_size(2 * clip - 1))})
                    print(json.dumps(rows[-1]), flush=True)
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "network": f"H={cfg.d_model} N={cfg.d_state} layers={cfg.n_layers} patch 1",
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--clips", type=int, nargs="+", default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.clips = args.clips or ([200, 201] if args.smoke else [16000, 16001])
    args.batches = args.batches or ([1, 4] if args.smoke else [1, 16, 64])
    result = run(args)
    print(table(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "batch_fft.json").write_text(json.dumps(result, indent=1) + "\n")
    bad = [r for r in result["rows"] if r["rel_err_vs_f64"] > 1e-5]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
