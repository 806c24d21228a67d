"""Compile one DESIGN-network step at B = 512 on CUDA; run under TORCH_LOGS=output_code."""

import torch

from bench.gpu10 import design_cfg
from model.network import S4DNetwork
from model.streaming import StreamingNetwork

cfg = design_cfg(False)
net = S4DNetwork(cfg, seed=0).eval().cuda()
s = StreamingNetwork(net, 320, block_size=64).eval().compile()
x = torch.randn(512, 320, 1, device="cuda")
with torch.inference_mode():
    s.step(x, s.zero_state(512))
