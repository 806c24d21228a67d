"""The keyword models' graphed streaming step: the GEMM form against the Triton core
(model/fused_core.py), same process, per batch size, with their largest relative difference;
then a torch.profiler table of the fused step's kernels at 1,456 sessions. Needs CUDA + Triton.

    python -m bench.fused_core [MODEL]        (default kws-s4d)
"""

import sys
import time
from pathlib import Path

import torch

from server.backends.cuda_graphs import GraphedStep
from server.backends.torch_backend import TorchBackend


def timeit(fn, n=50):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / n


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else "kws-s4d"
    be = TorchBackend.load(Path("checkpoints") / model, "cuda")
    st = be.streaming
    m = be.metadata
    print(model, "fused_core", st.fused_core, "steps", st.steps, "block", st.block)
    res = {}
    with torch.inference_mode():
        for bx in (16, 256, 1024, 1456, 2048, 4096):
            f = torch.randn(bx, m.frame_size, m.input_channels, device="cuda") * 0.1
            s = {k: torch.randn_like(v) * 0.1 for k, v in st.zero_state(bx).items()}
            for variant in ("gemm", "fused"):
                st.fused_core = variant == "fused"
                g = GraphedStep(st, bx, m.frame_size, m.input_channels)
                res[(variant, bx)] = timeit(lambda g=g, f=f, s=s: g(f, s))
            st.fused_core = False
            a = st.step(f, s)
            st.fused_core = True
            b = st.step(f, s)
            d = max(float((a[0] - b[0]).abs().max() / a[0].abs().max()),
                    *(float((a[1][k] - b[1][k]).abs().max()
                            / a[1][k].abs().max().clamp(min=1e-30)) for k in a[1]))
            print(bx, {v: round(res[(v, bx)], 3) for v in ("gemm", "fused")}, "rel diff",
                  f"{d:.2e}", flush=True)
        from torch.profiler import ProfilerActivity, profile

        bx = 1456
        f = torch.randn(bx, m.frame_size, m.input_channels, device="cuda") * 0.1
        s = {k: torch.randn_like(v) * 0.1 for k, v in st.zero_state(bx).items()}
        st.step(f, s)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                st.step(f, s)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12,
                                        max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
