"""ONNX Runtime's step graph with device-resident state (IOBinding over torch tensors).

`session.run` takes and returns host NumPy arrays: on CUDA every step would copy the whole
state of every session host -> device and back. Here the state slab is torch tensors on the
provider's device (`TorchSlabStorage`), and each step binds the gathered state rows as the
graph's inputs and fresh device tensors as its outputs (pointers, no copies); only the frames go
in and the logits come out. The same code runs with the CPU provider (tensors in host memory),
which is how it is tested without a GPU.

On CUDA, ONNX Runtime runs on torch's current stream (`user_compute_stream`, set by
`choose_providers`), so the graph sees the gathered rows written before it and the scatter
after it sees its outputs, in stream order, without host synchronisation.
"""

from __future__ import annotations

import numpy as np
import torch

from model.state import STATE_NAMES, state_row_shapes
from server.slab import TorchSlabStorage


class BoundStep:
    """`(frames, state) -> (logits, new_state)` through IOBinding; state: torch tensors."""

    def __init__(self, session, model_cfg, device: str):
        self.session = session
        self.cfg = model_cfg
        self.device = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" \
            else torch.device("cpu")
        self._ort_device = ("cuda", self.device.index or 0) if device == "cuda" else ("cpu", 0)
        self._rows = state_row_shapes(model_cfg)

    def new_slab(self, max_sessions: int) -> TorchSlabStorage:
        template = {k: torch.zeros((1, *s), dtype=torch.float32) for k, s in self._rows.items()}
        return TorchSlabStorage(template, max_sessions, device=self.device)

    def _bind(self, binding, name: str, tensor: torch.Tensor, output: bool) -> None:
        kind, index = self._ort_device
        bind = binding.bind_output if output else binding.bind_input
        bind(name, kind, index, np.float32, tuple(tensor.shape), tensor.data_ptr())

    def __call__(self, frames: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
        batch, length = frames.shape[:2]
        p, k = self.cfg.patch_size, self.cfg.d_output
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(self.device)
            inputs = {"frames": x}
            for name in STATE_NAMES:  # the slab's rows: float32, contiguous (no copy if so)
                inputs[name] = state[name].to(device=self.device, dtype=torch.float32).contiguous()
            logits_shape = (batch, length // p, k) if self.cfg.pooling == "none" else (batch, k)
            logits = torch.empty(logits_shape, dtype=torch.float32, device=self.device)
            new = {name: torch.empty((batch, *self._rows[name]), dtype=torch.float32,
                                     device=self.device) for name in STATE_NAMES}
            binding = self.session.io_binding()
            for name, tensor in inputs.items():
                self._bind(binding, name, tensor, output=False)
            self._bind(binding, "logits", logits, output=True)
            for name in STATE_NAMES:
                self._bind(binding, f"{name}_out", new[name], output=True)
            self.session.run_with_iobinding(binding)
            if self.device.type == "cuda":
                binding.synchronize_outputs()
            return logits.cpu().numpy(), new
