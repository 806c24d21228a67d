"""GPU check of issue 10's CPU-built pieces (run by scripts/gpu_check_gpu10.sh; SMOKE=1 on a CPU).

Sections, each written as JSON under --out (a failed section is recorded, the others run):

- step: the chunked streaming step of the DESIGN network (H=128, N=64, 4 layers, patch 1,
  frame 320 at 16 kHz), eager `StreamingNetwork.step` vs the CUDA-graph step the torch
  backend serves (`server.backends.cuda_graphs.GraphCache`), per precision mode and batch
  B = 1/16/64/512/2048: ms per step, real-time streams, fraction of the fp32 matmul rate
  (bench.core's timer and FLOP count), graph-vs-eager difference, and per mode the float32
  stream vs the float64 FFT forward on 1 s (exactness of fp32 on the GPU).
- batch: the FFT path (`S4DNetwork.forward`, what REST /predict runs) for 1 s clips at
  B = 1/16/64 (clips/s) and one 1,000,000-sample input (seconds, error vs float64).
- memory: state bytes per session and a slab of 100,000 idle sessions on the device.
- onnx: ONNX Runtime with device-resident state vs host arrays vs torch, if onnxruntime
  with the CUDA provider is importable (else recorded as skipped, with the reason).
- compiled: the step through `StreamingNetwork.compile()` (torch.compile / Inductor) vs the
  plain step, both CUDA-graphed as served; compile time; 1 s streamed vs float64.

`python -m bench.gpu10 --out DIR [--smoke]`; exits 1 when an exactness check fails.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.core import chunked_step_flops, matmul_gflops, timeit
from model.config import ModelConfig
from model.network import S4DNetwork
from model.precision import PRECISIONS, matmul_precision
from model.streaming import StreamingNetwork

RATE = 16000
FP32_TOL = 1e-5  # max rel error of a float32 path vs float64


def design_cfg(smoke: bool) -> ModelConfig:
    h, n = (16, 8) if smoke else (128, 64)
    return ModelConfig(d_input=1, d_model=h, d_state=n, n_layers=4 if not smoke else 2,
                       d_output=12, pooling="mean")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def design_setup(args, device):
    """The step sections' network (float32), frame, random generator, and 1 s of input for 8
    sessions with its float64 FFT forward (the exactness reference)."""
    cfg = design_cfg(args.smoke)
    frame = 320 if not args.smoke else 64
    net32 = S4DNetwork(cfg, seed=0).eval().to(device)
    net64 = S4DNetwork(cfg, seed=0).double().eval().to(device)
    gen = torch.Generator().manual_seed(0)
    hist = torch.randn(8, RATE if not args.smoke else 4 * frame, 1, generator=gen).to(device)
    with torch.inference_mode():
        ref = net64(hist.double())
    return cfg, frame, net32, gen, hist, ref


def streamed_rel(stream: StreamingNetwork, hist: torch.Tensor, ref: torch.Tensor) -> float:
    """`hist` streamed in frames (state carried): relative error of the last logits vs `ref`."""
    with torch.inference_mode():
        st = stream.zero_state(hist.shape[0])
        for s in range(0, hist.shape[1], stream.frame_size):
            logits, st = stream.step(hist[:, s : s + stream.frame_size], st)
    return rel(logits, ref)


def random_state(stream: StreamingNetwork, batch: int, gen, device) -> dict:
    """A mid-stream state for `batch` sessions (16 steps counted)."""
    state = {k: torch.randn(v.shape, generator=gen).to(device) * 0.1
             for k, v in stream.zero_state(batch).items()}
    state["count"] = torch.full_like(state["count"], 16.0)
    return state


def section_step(args, device) -> dict:
    cfg, frame, net32, gen, hist, ref = design_setup(args, device)
    mm = matmul_gflops(device) if not args.smoke else float("nan")
    rows, exact = [], {}
    for mode in args.modes:
        stream = StreamingNetwork(net32, frame, device=device, precision=mode).eval()
        exact[mode] = streamed_rel(stream, hist, ref)
        graphs = None
        if device.type == "cuda":
            from server.backends.cuda_graphs import GraphCache

            graphs = GraphCache(stream, 1, max_batch=max(args.batches))
        for b in args.batches:
            x = torch.randn(b, frame, 1, generator=gen).to(device)
            with torch.inference_mode():
                state = random_state(stream, b, gen, device)
                t_eager = timeit(partial(stream.step, x, state), device, min_time=args.min_time)
                e_logits, e_state = stream.step(x, state)
                row = {"mode": mode, "sessions": b, "eager_ms": t_eager * 1e3,
                       "eager_realtime_streams": b * frame / t_eager / RATE}
                if graphs is not None:
                    g = graphs.get(b, frame)
                    t_graph = timeit(partial(g, x, state), device, min_time=args.min_time)
                    g_logits, g_state = g(x, state)
                    row.update(graph_ms=t_graph * 1e3,
                               graph_realtime_streams=b * frame / t_graph / RATE,
                               graph_vs_eager=max(rel(g_logits, e_logits),
                                                  *(rel(g_state[k], e_state[k]) for k in e_state)))
                    best = min(t_eager, t_graph)
                else:
                    best = t_eager
                flops = chunked_step_flops(cfg, b, frame, stream.block)
                row["best_fraction_of_fp32_matmul"] = flops / best / 1e9 / mm
            rows.append(row)
            print(json.dumps(row), flush=True)
        graphs = stream = None  # free this mode's graphs before the next
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ok = exact.get("fp32", 0.0) <= FP32_TOL and all(
        r.get("graph_vs_eager", 0.0) <= (FP32_TOL if r["mode"] != "bf16" else 2e-2) for r in rows)
    return {"config": {"H": cfg.d_model, "N": cfg.d_state, "layers": cfg.n_layers, "patch": 1,
                       "frame": frame}, "fp32_matmul_gflops": mm,
            "stream_1s_vs_float64_rel": exact, "rows": rows, "ok": ok}


def section_compiled(args, device) -> dict:
    """The step through `StreamingNetwork.compile()` (Inductor) against the plain step, both
    as the server runs them (CUDA graphs on a GPU, eager on a CPU); 1 s streamed vs float64."""
    cfg, frame, net32, gen, hist, ref = design_setup(args, device)
    rows, exact, compile_s = [], {}, {}
    for mode in args.compiled_modes:
        plain = StreamingNetwork(net32, frame, device=device, precision=mode).eval()
        fused = StreamingNetwork(net32, frame, device=device, precision=mode).eval().compile()
        t0 = time.perf_counter()
        exact[mode] = streamed_rel(fused, hist, ref)  # the first call compiles
        compile_s[mode] = round(time.perf_counter() - t0, 1)
        if device.type == "cuda":
            from server.backends.cuda_graphs import GraphCache

            runners = {"plain": GraphCache(plain, 1, max_batch=max(args.batches)),
                       "compiled": GraphCache(fused, 1, max_batch=max(args.batches))}
        else:
            runners = {"plain": None, "compiled": None}
        for b in args.batches:
            x = torch.randn(b, frame, 1, generator=gen).to(device)
            row = {"mode": mode, "sessions": b}
            with torch.inference_mode():
                state = random_state(plain, b, gen, device)
                outs = {}
                for name, net in (("plain", plain), ("compiled", fused)):
                    cache = runners[name]
                    fn = cache.get(b, frame) if cache is not None else None
                    fn = fn or net.step
                    t = timeit(partial(fn, x, state), device, min_time=args.min_time)
                    outs[name] = fn(x, state)
                    row[f"{name}_ms"] = t * 1e3
                    row[f"{name}_realtime_streams"] = b * frame / t / RATE
                (pl, ps), (cl, cs) = outs["plain"], outs["compiled"]
                row["compiled_vs_plain"] = max(rel(cl, pl), *(rel(cs[k], ps[k]) for k in ps))
                row["speedup"] = row["plain_ms"] / row["compiled_ms"]
            rows.append(row)
            print(json.dumps(row), flush=True)
        runners = plain = fused = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # fp32 must agree to float32 rounding; tf32 / bf16 GEMMs round their operands, so a fused
    # kernel that sums in another order differs by their rounding (10 / 7 mantissa bits)
    tol = {"fp32": FP32_TOL, "tf32": 2e-3, "bf16": 2e-2}
    ok = exact.get("fp32", 0.0) <= FP32_TOL and all(
        r["compiled_vs_plain"] <= tol[r["mode"]] for r in rows)
    return {"config": {"H": cfg.d_model, "N": cfg.d_state, "layers": cfg.n_layers, "patch": 1,
                       "frame": frame}, "compile_seconds": compile_s,
            "stream_1s_vs_float64_rel": exact, "rows": rows, "ok": ok}


def section_batch(args, device) -> dict:
    cfg = design_cfg(args.smoke)
    clip = RATE if not args.smoke else 2000
    net32 = S4DNetwork(cfg, seed=0).eval().to(device)
    rows = []
    gen = torch.Generator().manual_seed(1)
    for mode in args.modes:
        for b in args.clip_batches:
            x = torch.randn(b, clip, 1, generator=gen).to(device)
            with torch.inference_mode(), matmul_precision(mode, device):
                t = timeit(partial(net32, x), device, min_time=args.min_time)
            rows.append({"mode": mode, "batch": b, "clip_samples": clip, "ms": t * 1e3,
                         "clips_per_s": b / t})
            print(json.dumps(rows[-1]), flush=True)
    n = args.long_samples
    x = torch.randn(1, n, 1, generator=gen).to(device)
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        y32 = net32(x)
        sync(device)
        t_long = time.perf_counter() - t0
        t_long_warm = timeit(lambda: net32(x), device, min_time=0, min_reps=2, max_reps=2)
        net64 = S4DNetwork(cfg, seed=0).double().eval().to(device)
        err = rel(y32, net64(x.double()))
        del net64
    long = {"samples": n, "first_call_s": t_long, "warm_s": t_long_warm,
            "samples_per_s": n / t_long_warm, "rel_error_vs_float64": err,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}
    print(json.dumps(long), flush=True)
    return {"rows": rows, "long": long, "ok": err <= FP32_TOL,
            "reference_clips_per_s_h100": {"1": 192, "16": 776, "64": 921}}


def section_memory(args, device) -> dict:
    from model.state import state_bytes_per_session
    from server.slab import TorchSlabStorage

    cfg = design_cfg(args.smoke)
    per = state_bytes_per_session(cfg)
    n = args.idle_sessions
    stream = StreamingNetwork(S4DNetwork(cfg, seed=0), 320, device=device)
    before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    slab = TorchSlabStorage(stream.zero_state(1), n, device=device)
    after = torch.cuda.memory_allocated() if device.type == "cuda" else slab.bytes_per_session * n
    out = {"state_bytes_per_session": per, "idle_sessions": n,
           "slab_bytes": after - before, "slab_gb": (after - before) / 1e9,
           "device_total_gb": torch.cuda.get_device_properties(device).total_memory / 1e9
           if device.type == "cuda" else None, "ok": True}
    del slab
    return out


def section_onnx(args, device) -> dict:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"skipped": f"onnxruntime not installed ({exc}); the onnxruntime-gpu wheel "
                           "(244 MiB) does not fit the 64 MiB carry limit", "ok": True}
    providers = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" not in providers:
        return {"skipped": f"no CUDAExecutionProvider (available: {providers})", "ok": True}
    import tempfile
    from types import SimpleNamespace

    from model.config import CheckpointConfig, TaskConfig
    from model.export import export_step
    from server.backends.base import ModelMetadata
    from server.backends.onnx_backend import OnnxBackend, choose_providers

    cfg = design_cfg(args.smoke)
    frame = 320 if not args.smoke else 64
    net = S4DNetwork(cfg, seed=0).eval()
    tmp = Path(tempfile.mkdtemp(prefix="gpu10-onnx-"))
    export_step(net, frame, tmp / "step.onnx")
    task = TaskConfig(name="d", sample_rate=RATE, input_channels=1, frame_size=frame,
                      class_names=[str(i) for i in range(cfg.d_output)])
    config = CheckpointConfig(model=cfg, task=task)
    dev = "cuda" if device.type == "cuda" else "cpu"
    rows, worst = [], 0.0
    stream = StreamingNetwork(net, frame, device=device)
    for device_state in (False, True):
        sess = ort.InferenceSession(str(tmp / "step.onnx"),
                                    providers=choose_providers(dev, torch_stream=device_state))
        meta = ModelMetadata.from_checkpoint("d", config, frame_size=frame, streamable=True,
                                             parameters=0, backend="onnxruntime", device=dev)
        be = OnnxBackend(sess, None, SimpleNamespace(max_steps=1), config, meta,
                         device_state=device_state)
        for b in args.onnx_batches:
            slab = be.new_slab(b)
            state = slab.gather(list(range(b)))
            x = np.random.default_rng(b).standard_normal((b, frame, 1)).astype(np.float32)
            t = timeit(partial(be.step, x, state), device, min_time=args.min_time)
            logits, _ = be.step(x, state)
            with torch.inference_mode():
                ref, _ = stream.step(torch.from_numpy(x).to(device), stream.zero_state(b))
            worst = max(worst, rel(torch.from_numpy(logits), ref))
            rows.append({"device_state": device_state, "batch": b, "ms": t * 1e3,
                         "realtime_streams": b * frame / t / RATE})
            print(json.dumps(rows[-1]), flush=True)
    return {"providers": providers, "rows": rows, "max_rel_vs_torch": worst,
            "ok": worst <= FP32_TOL}


def md_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table: the first column left-aligned, the others (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(directory: Path, results_md: Path) -> None:
    """The measured step / batch / memory / onnx tables into bench/RESULTS.md (marked section)."""
    from bench.precision import put_section

    def load(name):
        f = directory / f"{name}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    step, batch, memory, onnx, compiled = (
        load(n) for n in ("step", "batch", "memory", "onnx", "compiled"))
    head = step or batch or memory or {}
    parts = [f"{head.get('device')}, torch {head.get('torch')}, {head.get('date')}, "
             "`bash scripts/gpu_check_gpu10.sh` (bench/gpu10.py). Eager = "
             "`StreamingNetwork.step`; graph = the torch backend's CUDA graph of the same step."]
    if step and "rows" in step:
        c = step["config"]
        nan = float("nan")
        parts.append(f"### Streaming step (H={c['H']}, N={c['N']}, {c['layers']} layers, patch "
                     f"{c['patch']}, frame {c['frame']}; fp32 matmul "
                     f"{step['fp32_matmul_gflops']:.0f} GFLOP/s)\n\n" + md_table(
                         ["mode", "sessions", "eager ms", "eager RT streams", "graph ms",
                          "graph RT streams", "of fp32 matmul", "graph vs eager"],
                         [[r["mode"], r["sessions"], f"{r['eager_ms']:.2f}",
                           f"{r['eager_realtime_streams']:,.0f}", f"{r.get('graph_ms', nan):.2f}",
                           f"{r.get('graph_realtime_streams', nan):,.0f}",
                           f"{r['best_fraction_of_fp32_matmul']:.1%}",
                           f"{r.get('graph_vs_eager', nan):.1e}"] for r in step["rows"]]))
        parts[-1] += ("\n\n1 s streamed in frames vs the float64 FFT forward (max rel error): "
                      + ", ".join(f"{m} {v:.1e}" for m, v in step["stream_1s_vs_float64_rel"].items()))
    if compiled and "rows" in compiled:
        parts.append("### Compiled step (`StreamingNetwork.compile()`, `--compile-step`), both "
                     "CUDA-graphed as served\n\n"
                     f"{compiled.get('device')}, {compiled.get('date')}; compile time (s): "
                     + ", ".join(f"{m} {v}" for m, v in compiled["compile_seconds"].items())
                     + ".\n\n" + md_table(
                         ["mode", "sessions", "plain ms", "plain RT streams", "compiled ms",
                          "compiled RT streams", "speed-up", "compiled vs plain"],
                         [[r["mode"], r["sessions"], f"{r['plain_ms']:.2f}",
                           f"{r['plain_realtime_streams']:,.0f}", f"{r['compiled_ms']:.2f}",
                           f"{r['compiled_realtime_streams']:,.0f}", f"{r['speedup']:.2f}x",
                           f"{r['compiled_vs_plain']:.1e}"] for r in compiled["rows"]]))
        parts[-1] += ("\n\n1 s streamed through the compiled step vs the float64 FFT forward: "
                      + ", ".join(f"{m} {v:.1e}" for m, v in
                                  compiled["stream_1s_vs_float64_rel"].items()))
    if batch and "rows" in batch:
        parts.append("### Batch FFT path (REST /predict), 1 s clips\n\n" + md_table(
            ["mode", "batch", "ms", "clips/s"],
            [[r["mode"], r["batch"], f"{r['ms']:.2f}", f"{r['clips_per_s']:,.0f}"]
             for r in batch["rows"]]))
        lg = batch["long"]
        parts[-1] += (f"\n\nOne {lg['samples']:,}-sample input (fp32): {lg['warm_s']:.3f} s warm "
                      f"({lg['first_call_s']:.3f} s first call), rel error vs float64 "
                      f"{lg['rel_error_vs_float64']:.1e}, peak memory {lg['peak_memory_gb']} GB. "
                      "Reference S4 repository on an H100: 192 / 776 / 921 clips/s at B = 1 / 16 / 64.")
    if memory and "slab_gb" in memory:
        parts.append(f"### Memory\n\nState per session {memory['state_bytes_per_session']:,} B; "
                     f"a slab of {memory['idle_sessions']:,} idle sessions takes "
                     f"{memory['slab_gb']:.2f} GB (device: {memory['device_total_gb'] or 0:.0f} GB).")
    if onnx:
        parts.append("### ONNX Runtime, device-resident state\n\n" + (
            onnx.get("skipped") or "\n".join(
                f"- device_state={r['device_state']} B={r['batch']}: {r['ms']:.2f} ms, "
                f"{r['realtime_streams']:,.0f} RT streams" for r in onnx["rows"])))
    put_section(results_md, "## GPU step engine (issue 10): CUDA graphs, precision, batch path",
                "\n\n".join(parts), key="gpu10")


SECTIONS = {"step": section_step, "batch": section_batch, "memory": section_memory,
            "onnx": section_onnx, "compiled": section_compiled}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu10", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None,
                    help="a returned $OUT/gpu10 folder -> bench/RESULTS.md")
    ap.add_argument("--results-md", type=Path,
                    default=Path(__file__).resolve().parent / "RESULTS.md")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU: a dry run")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    args = ap.parse_args(argv)
    if args.report:
        report(args.report, args.results_md)
        return 0
    if args.out is None:
        ap.error("--out is required")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    args.modes = list(PRECISIONS)
    args.compiled_modes = list(PRECISIONS) if not args.smoke else ["fp32"]
    args.batches = [1, 16, 64, 512, 2048] if not args.smoke else [1, 4]
    args.clip_batches = [1, 16, 64] if not args.smoke else [1, 2]
    args.onnx_batches = [1, 16, 64] if not args.smoke else [1, 2]
    args.long_samples = 1_000_000 if not args.smoke else 20_000
    args.idle_sessions = 100_000 if not args.smoke else 100
    args.min_time = 0.3 if not args.smoke else 0.0
    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "smoke": args.smoke}
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            result = SECTIONS[name](args, device)
        except Exception as exc:  # record and go on: one broken section must not hide the rest
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}", "ok": False}
        result.update(env, seconds=round(time.perf_counter() - t0, 1))
        ok &= bool(result.get("ok"))
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"== {name}: {'OK' if result.get('ok') else 'FAIL'} "
              f"({result['seconds']} s)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
