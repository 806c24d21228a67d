"""The Triton frame core (model/fused_core.py) against the GEMM form and the float64 batch
forward. On a GPU it runs compiled; on a CPU machine with Triton installed it runs in Triton's
interpreter (a subprocess with TRITON_INTERPRET=1, set before Triton is imported); without
Triton the tests skip (CPU installs serve the GEMM form)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")

CHECK = textwrap.dedent("""
    import sys, torch
    from model.config import ModelConfig
    from model.network import S4DNetwork
    from model.streaming import StreamingNetwork

    dev = torch.device(sys.argv[1])
    worst = {}
    # (patch, frame, d_state, pooling): S = frame / patch steps, M = d_state / 2 modes
    # (M = 3: masked mode lanes), H = 20: a partial channel tile
    for patch, frame, d_state, pooling in ((4, 8, 8, "mean"), (2, 10, 6, "ema"),
                                           (1, 3, 8, "none"), (4, 4, 64, "last")):
        kw = {"ema_tau_s": 0.1, "sample_rate": 100} if pooling == "ema" else {}
        cfg = ModelConfig(d_input=1, d_model=20, d_state=d_state, n_layers=2, d_output=3,
                          pooling=pooling, patch_size=patch, **kw)
        net = S4DNetwork(cfg, seed=1).eval()
        fused = StreamingNetwork(net, frame, device=dev, fused_core=True)
        plain = StreamingNetwork(net, frame, device=dev, fused_core=False)
        assert fused.fused_core and not plain.fused_core
        g = torch.Generator().manual_seed(0)
        batch = 37  # 3 session tiles, the last one partial
        # one step from random state: logits and every state tensor
        state = {k: (torch.randn(v.shape, generator=g) * 0.3).to(dev)
                 for k, v in plain.zero_state(batch).items()}
        state["count"] = torch.full_like(state["count"], 5)
        frames = torch.randn(batch, frame, 1, generator=g).to(dev)
        with torch.inference_mode():
            a, sa = fused.step(frames, state)
            b, sb = plain.step(frames, state)
        err = max(float((a - b).abs().max() / b.abs().max()),
                  *(float((sa[k] - sb[k]).abs().max() / sb[k].abs().max().clamp(min=1e-30))
                    for k in sb))
        # a whole stream (full frames + a partial last frame) vs the float64 batch forward
        n = 3 * frame + patch
        x = torch.randn(batch, n, 1, generator=g, dtype=torch.float64)
        with torch.inference_mode():
            ref = net.double()(x)
            net.float()
            st = fused.zero_state(batch)
            outs = []
            for at in range(0, n, frame):
                logits, st = fused.step(x[:, at:at + frame].float().to(dev), st)
                outs.append(logits)
        got = torch.cat(outs, 1) if pooling == "none" else logits
        err_ref = float((got.double().cpu() - ref).abs().max() / ref.abs().max())
        worst[f"{patch}/{frame}/{d_state}/{pooling}"] = (err, err_ref)
    print(worst)
    assert all(e <= 1e-5 and r <= 1e-5 for e, r in worst.values()), worst
""")


def run_check(device: str, env: dict) -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK, device], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_triton
def test_fused_core_interpreted_matches_gemm_form_and_float64():
    run_check("cpu", {**os.environ, "TRITON_INTERPRET": "1"})


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_core_on_gpu_matches_gemm_form_and_float64():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run_check("cuda", env)


def test_fused_core_is_refused_where_it_cannot_run():
    from model.config import ModelConfig
    from model.network import S4DNetwork
    from model.streaming import StreamingNetwork

    net = S4DNetwork(ModelConfig(d_input=1, d_model=8, d_state=8, n_layers=1, d_output=2,
                                 patch_size=1), seed=0).eval()
    with pytest.raises(ValueError, match="fused core"):
        StreamingNetwork(net, 100, fused_core=True)  # 100 steps: more than one small block
    assert not StreamingNetwork(net, 4).fused_core  # the default off CUDA: the GEMM form
