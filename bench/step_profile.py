"""Where the streaming step of the DESIGN network spends its time on a GPU, and what changes it.

    python -m bench.step_profile --out DIR [--batches 64,512] [--blocks 32,64,80,160]
        [--modes default,max-autotune-no-cudagraphs] [--profile-batch 512]

The DESIGN network (bench.gpu10: H=128, N=64, 4 layers, patch 1, frame 320 at 16 kHz), or a
shipped checkpoint with its own frame (--checkpoint), in fp32, served as the torch backend serves it (a CUDA graph per batch): the plain step and
`StreamingNetwork.compile(mode=...)` for each Inductor mode, for each sub-block length b.
Each row: ms per step, real-time streams, fraction of the fp32 matmul rate measured in the
same run, and the difference to the plain b = 64 step (every variant computes the same
function). Then torch.profiler's kernel table of the plain and default-compiled step at
--profile-batch (b = 64), so the time is attributed to kernels rather than guessed.
Writes DIR/step_profile.json and DIR/profile_<variant>.txt.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from functools import partial
from pathlib import Path

import torch

from bench.core import chunked_step_flops, matmul_gflops, timeit
from bench.gpu10 import RATE, design_cfg, random_state, rel
from model.network import S4DNetwork
from model.streaming import StreamingNetwork


def _runner(stream: StreamingNetwork, batch: int, frame: int, device):
    if device.type != "cuda":
        return stream.step
    from server.backends.cuda_graphs import GraphCache

    return GraphCache(stream, 1, max_batch=batch).get(batch, frame) or stream.step


def _kernel_table(fn, device, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(20):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=90)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="64,512")
    ap.add_argument("--blocks", default="64")
    ap.add_argument("--modes", default="plain,default",
                    help="plain (no compile) and Inductor modes, comma separated")
    ap.add_argument("--precisions", default="fp32", help="fp32,tf32,bf16 (model/precision.py)")
    ap.add_argument("--profile-batch", type=int, default=512)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--smoke", action="store_true", help="a tiny network (CPU check)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="a checkpoint folder (its own frame) instead of the DESIGN network")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    blocks = [int(b) for b in args.blocks.split(",")]
    modes = args.modes.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        from model.checkpoint import load_checkpoint

        net, ckpt = load_checkpoint(args.checkpoint, device=str(device))
        cfg, frame, rate = ckpt.model, int(ckpt.task.frame_size), int(ckpt.task.sample_rate)
    else:
        cfg = design_cfg(args.smoke)
        frame, rate = (320 if not args.smoke else 64), RATE
        net = S4DNetwork(cfg, seed=0).eval().to(device)
    gen = torch.Generator().manual_seed(0)
    mm = matmul_gflops(device)
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda"
                      else "cpu", "torch": torch.__version__, "fp32_matmul_gflops": mm}), flush=True)
    inputs = {b: torch.randn(b, frame, cfg.d_input, generator=gen).to(device) * 0.1
              for b in batches}
    reference = StreamingNetwork(net, frame, device=device, block_size=64).eval()
    states = {b: random_state(reference, b, gen, device) for b in batches}
    with torch.inference_mode():
        ref_out = {b: reference.step(inputs[b], states[b]) for b in batches}
    rows = []
    for precision, block, mode in itertools.product(args.precisions.split(","), blocks, modes):
        stream = StreamingNetwork(net, frame, device=device, block_size=block,
                                  precision=precision).eval()
        compile_s = 0.0
        if mode != "plain":
            stream.compile(**({} if mode == "default" else {"mode": mode}))
            t0 = time.perf_counter()
            with torch.inference_mode():
                stream.step(inputs[batches[0]], states[batches[0]])
            compile_s = time.perf_counter() - t0
        for b in batches:
            with torch.inference_mode():
                fn = partial(_runner(stream, b, frame, device), inputs[b], states[b])
                t = timeit(fn, device, min_time=args.min_time)
                logits, new = fn()
                pl, ps = ref_out[b]
                diff = max(rel(logits, pl), *(rel(new[k], ps[k]) for k in ps))
                flops = chunked_step_flops(cfg, b, frame, stream.block)
                row = {"precision": precision, "block": stream.block, "mode": mode,
                       "sessions": b, "ms": t * 1e3, "frame": frame,
                       "realtime_streams": b * frame / t / rate,
                       "fraction_of_fp32_matmul": flops / t / 1e9 / mm,
                       "vs_plain_b64": diff, "compile_s": round(compile_s, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                if (b == args.profile_batch and block == 64 and precision == "fp32"
                        and mode in ("plain", "default")):
                    (args.out / f"profile_{mode}.txt").write_text(_kernel_table(fn, device))
        stream = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    (args.out / "step_profile.json").write_text(json.dumps(
        {"fp32_matmul_gflops": mm, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
