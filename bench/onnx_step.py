"""Frame-step benchmark: PyTorch (`StreamingNetwork`) vs ONNX Runtime (`step.onnx`), same run,
same shapes, same frames.

    python -m bench.onnx_step [--json] [--checkpoint DIR] [--batches 1,16,64] [--device cpu|cuda]

Model: the shipped checkpoint (checkpoints/kws-s4d) if present, else a random network of the
DESIGN config (H=128, N=64, 4 layers, frame 320 samples at 16 kHz). Per batch size B, each
engine runs full frames [B, T, C] with carried state; one step's wall time is measured
(host arrays in and out for ONNX Runtime, as the server's backend does; for PyTorch on CUDA,
synchronised). Reported: p50/p99 latency per step, throughput in input samples/s summed over
the B streams, and real-time streams = throughput / sample_rate (the number of live streams
one engine instance could keep up with, compute only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "kws-s4d"


def design_checkpoint(directory: Path) -> Path:
    from model.checkpoint import save_checkpoint
    from model.config import CheckpointConfig, ModelConfig, TaskConfig
    from model.network import S4DNetwork

    mcfg = ModelConfig(d_input=1, d_model=128, d_state=64, n_layers=4, d_output=10)
    tcfg = TaskConfig(name="design", sample_rate=16000, input_channels=1, frame_size=320,
                      class_names=[str(i) for i in range(10)])
    return save_checkpoint(directory / "design", S4DNetwork(mcfg, seed=0),
                           CheckpointConfig(model=mcfg, task=tcfg))


def measure(fn, sync, min_time: float, min_reps: int, max_reps: int) -> np.ndarray:
    for _ in range(5):
        fn()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Flags (shared by `python -m bench.onnx_step` and `s4d bench onnx`)."""
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads for both engines (0: each engine's default)")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--min-reps", type=int, default=200)
    ap.add_argument("--json", action="store_true")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from model.checkpoint import load_checkpoint
    from model.export import export_checkpoint
    from model.state import STATE_NAMES
    from model.streaming import StreamingNetwork
    from server.backends.onnx_backend import choose_providers

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["S4D_ONNX_THREADS"] = str(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="s4d-bench-onnx-")
    ckpt = args.checkpoint or (SHIPPED if (SHIPPED / "config.json").is_file() else None)
    ckpt = ckpt or design_checkpoint(Path(tmp.name))
    dev = torch.device(args.device)
    network, config = load_checkpoint(ckpt, device=str(dev))
    t, rate, c = config.task.frame_size, config.task.sample_rate, config.model.d_input
    stream = StreamingNetwork(network, t, device=dev)
    t0 = time.perf_counter()
    info = export_checkpoint(ckpt, Path(tmp.name) / "onnx", frame_size=t, max_steps=64)
    export_s = time.perf_counter() - t0
    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
    providers = choose_providers(args.device)
    sess = ort.InferenceSession(str(info.step_path), sess_options=opts, providers=providers)

    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    rows = []
    rng = np.random.default_rng(0)
    for b in [int(x) for x in args.batches.split(",")]:
        frames = (rng.standard_normal((b, t, c)) * 0.1).astype(np.float32)
        with torch.inference_mode():
            st = {"state": stream.zero_state(b)}
            ft = torch.from_numpy(frames).to(dev)

            def torch_step(st=st, ft=ft):
                logits, st["state"] = stream.step(ft, st["state"])
                return logits

            times_t = measure(torch_step, sync, args.min_time, args.min_reps, 100000)
            torch_step()
            ref_state = {k: v.float().cpu().numpy() for k, v in st["state"].items()}
        so = {"state": dict(ref_state)}

        def ort_step(so=so, frames=frames):
            out = sess.run(None, {"frames": frames, **so["state"]})
            so["state"] = dict(zip(STATE_NAMES, out[1:], strict=True))
            return out[0]

        times_o = measure(ort_step, lambda: None, args.min_time, args.min_reps, 100000)
        for engine, times in (("torch", times_t), ("onnxruntime", times_o)):
            mean = float(times.mean())
            rows.append({
                "engine": engine, "batch": b, "reps": len(times),
                "p50_ms": float(np.percentile(times, 50) * 1e3),
                "p99_ms": float(np.percentile(times, 99) * 1e3),
                "mean_ms": mean * 1e3,
                "samples_per_s": b * t / mean,
                "realtime_streams": b * t / mean / rate,
            })
        # sanity: one step from the same state agrees
        s0 = {k: v.copy() for k, v in ref_state.items()}
        lo = sess.run(None, {"frames": frames, **s0})[0]
        with torch.inference_mode():
            state_t = {k: torch.from_numpy(v).to(dev) for k, v in ref_state.items()}
            lt = stream.step(torch.from_numpy(frames).to(dev), state_t)[0].float().cpu().numpy()
        rows[-1]["max_rel_diff_vs_torch"] = float(np.abs(lo - lt).max() / max(np.abs(lt).max(), 1e-30))

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": ort.__version__,
                    "device": args.device, "ort_providers": sess.get_providers(),
                    "torch_threads": torch.get_num_threads(),
                    "ort_threads": args.threads or "default",
                    "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "model": {"checkpoint": str(ckpt), **{k: getattr(config.model, k) for k in (
            "d_model", "d_state", "n_layers", "patch_size", "d_output")},
            "frame_size": t, "sample_rate": rate},
        "export_seconds": round(export_s, 2),
        "command": " ".join(["s4d" if sys.argv[1:2] == ["bench"] else "python -m bench.onnx_step",
                             *sys.argv[1:]]),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['date']}  {ckpt}  frame={t}  device={args.device}  providers={sess.get_providers()}")
        print(f"{'engine':12} {'B':>4} {'p50 ms':>8} {'p99 ms':>8} {'samples/s':>12} {'RT streams':>10}")
        for r in rows:
            print(f"{r['engine']:12} {r['batch']:>4} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
                  f"{r['samples_per_s']:12.0f} {r['realtime_streams']:10.1f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
