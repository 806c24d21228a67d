"""Core benchmark: the chunked recurrent step vs the per-sample loop vs recomputing the FFT
convolution over the history, same network, same run (issue: S4D core).

    python -m bench.core [--json] [--device cpu|cuda] [--sessions 1,16,64,256]

Throughput is in input samples per second summed over sessions; a real-time 16 kHz stream
needs 16,000 of them. GFLOP/s counts the matrix products of the chunked step and is compared
with this machine's float32 matrix-multiply rate, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from functools import partial

import torch

from model.config import ModelConfig
from model.network import S4DNetwork
from model.recurrence import PerSampleStepper
from model.streaming import StreamingNetwork

SAMPLE_RATE = 16000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, min_time=0.5, min_reps=3, max_reps=200) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(device: torch.device) -> float:
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = timeit(lambda: a @ b, device, min_time=1.0)
    return 2 * n**3 / seconds / 1e9


def chunked_step_flops(cfg: ModelConfig, batch: int, frame: int, block: int) -> float:
    """Matrix-product FLOPs of one chunked step (SSM GEMMs, GLU linears, encoder, decoder)."""
    steps = frame // cfg.patch_size
    h, n = cfg.d_model, cfg.d_state
    if block:  # local [b -> b + N] and state-output [N -> b] GEMMs per sub-block
        ssm = 2 * h * batch * steps * (block + 2 * n)
    else:
        ssm = 2 * h * batch * (steps + n) ** 2
    per_layer = ssm + 2 * batch * steps * h * 2 * h
    encoder = 2 * batch * steps * cfg.patch_size * cfg.d_input * h
    return cfg.n_layers * per_layer + encoder + 2 * batch * h * cfg.d_output


def recompute(net: S4DNetwork, history: torch.Tensor, sessions_per_call: int = 16) -> None:
    """What a server without a recurrent form does per frame: the FFT path over the whole
    history, for every session (in groups, so large session counts fit in memory)."""
    for start in range(0, history.shape[0], sessions_per_call):
        net(history[start : start + sessions_per_call])


def run(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_input=1, d_model=args.d_model, d_state=args.d_state, n_layers=args.n_layers,
        d_output=12, pooling="mean",
    )
    net64 = S4DNetwork(cfg, seed=0).double().eval().to(device)
    net32 = S4DNetwork(cfg, seed=0).float().eval().to(device)
    frame = args.frame
    chunked = StreamingNetwork(net64, frame, dtype=torch.float32, device=device)
    stepper = PerSampleStepper(net64, dtype=torch.float32, device=device)
    history = args.history
    mm_rate = matmul_gflops(device)
    rows = []
    for batch in args.sessions:
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, history, 1, generator=g, dtype=torch.float64).to(device)
        with torch.inference_mode():
            # accuracy: stream the whole history in frames (float32) vs a float64 FFT reference,
            # on up to 8 sessions (the error does not depend on how many run together)
            n_acc = min(batch, 8)
            state = chunked.zero_state(n_acc)
            for s in range(0, history, frame):
                logits, state = chunked.step(x[:n_acc, s : s + frame].float(), state)
            ref = net64(x[:n_acc])
            err_chunked = ((logits.double() - ref).abs().max() / ref.abs().max()).item()
            state = chunked.zero_state(batch)
            # speed: one frame on top of a stream that already has state
            frame_x = x[:, :frame].float()
            t_chunked = timeit(partial(chunked.step, frame_x, state), device)
            per_sample_state = stepper.zero_state(batch)
            t_per_sample = timeit(
                partial(stepper.step, frame_x, per_sample_state), device, min_time=0.2, min_reps=1, max_reps=3
            )
            x_hist = x.float()
            t_recompute = timeit(partial(recompute, net32, x_hist), device, min_time=0.3, min_reps=1, max_reps=3)
        samples = batch * frame
        flops = chunked_step_flops(cfg, batch, frame, chunked.block)
        row = {
            "sessions": batch,
            "chunked_samples_per_s": samples / t_chunked,
            "per_sample_samples_per_s": samples / t_per_sample,
            "recompute_fft_samples_per_s": samples / t_recompute,
            "chunked_step_ms": t_chunked * 1e3,
            "chunked_gflops": flops / t_chunked / 1e9,
            "chunked_fraction_of_matmul": flops / t_chunked / 1e9 / mm_rate,
            "speedup_vs_per_sample": t_per_sample / t_chunked,
            "max_rel_error_vs_float64": err_chunked,
        }
        for key in ("chunked", "per_sample", "recompute_fft"):
            row[f"{key}_realtime_streams"] = row[f"{key}_samples_per_s"] / SAMPLE_RATE
        rows.append(row)
        if not args.json:
            print_row(row)
    return {
        "benchmark": "core",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "config": {"block": chunked.block, "H": cfg.d_model, "N": cfg.d_state, "layers": cfg.n_layers, "frame": frame, "history_samples": history},
        "matmul_gflops": mm_rate,
        "rows": rows,
    }


HEADER = (
    f"{'B':>4} {'chunked RT':>11} {'per-sample RT':>14} {'recompute RT':>13} "
    f"{'speedup':>8} {'step ms':>8} {'GFLOP/s':>8} {'of mm':>6} {'rel err':>9}"
)


def print_row(r: dict) -> None:
    print(
        f"{r['sessions']:>4} {r['chunked_realtime_streams']:>11.2f} {r['per_sample_realtime_streams']:>14.3f} "
        f"{r['recompute_fft_realtime_streams']:>13.2f} {r['speedup_vs_per_sample']:>7.0f}x "
        f"{r['chunked_step_ms']:>8.2f} {r['chunked_gflops']:>8.1f} {r['chunked_fraction_of_matmul']:>6.0%} "
        f"{r['max_rel_error_vs_float64']:>9.1e}"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sessions", default="1,16,64,256", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--frame", type=int, default=320)
    p.add_argument("--history", type=int, default=SAMPLE_RATE, help="samples of history for the recompute baseline")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-state", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", action="store_true")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return execute(args)


def execute(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.json:
        print("real-time 16 kHz streams (RT) per mode; chunked frame T =", args.frame)
        print(HEADER)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"float32 matmul rate measured in this run: {result['matmul_gflops']:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
