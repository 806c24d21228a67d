"""State slabs: one preallocated block of streaming state per model, addressed by slot.

`TorchSlabStorage` / `NumpySlabStorage` hold the tensors ([max_sessions, ...] per state name);
`StateSlab` adds the free-slot list and accounting on top of any `SlabStorage`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from server.backends.base import SlabStorage, State


class TorchSlabStorage:
    """Device tensors [capacity + 1, *row_shape] per state name (torch). Row `scratch_row`
    (= capacity) belongs to no session: a captured whole-step graph points its padding rows
    there (server/backends/cuda_graphs.py)."""

    def __init__(self, template: Mapping[str, Any], capacity: int, device: Any = None):
        import torch

        self._torch = torch
        self.capacity = int(capacity)
        self.scratch_row = self.capacity
        with torch.inference_mode():
            self.tensors = {
                k: torch.zeros(
                    (self.capacity + 1, *v.shape[1:]), dtype=v.dtype, device=device or v.device
                )
                for k, v in template.items()
            }
        self.device = next(iter(self.tensors.values())).device if self.tensors else device
        self.bytes_per_session = sum(
            t[0].numel() * t.element_size() for t in self.tensors.values()
        )

    def _idx(self, slots: Sequence[int]):
        return self._torch.as_tensor(list(slots), dtype=self._torch.long, device=self.device)

    def zero(self, slots: Sequence[int]) -> None:
        if not slots:
            return
        with self._torch.inference_mode():
            idx = self._idx(slots)
            for t in self.tensors.values():
                t.index_fill_(0, idx, 0)

    def gather(self, slots: Sequence[int], pad_to: int | None = None) -> State:
        torch = self._torch
        with torch.inference_mode():
            idx = self._idx(slots)
            out = {}
            for k, t in self.tensors.items():
                rows = t.index_select(0, idx)
                if pad_to is not None and pad_to > len(slots):
                    pad = torch.zeros((pad_to - len(slots), *t.shape[1:]), dtype=t.dtype, device=t.device)
                    rows = torch.cat([rows, pad], 0)
                out[k] = rows
            return out

    def scatter(self, slots: Sequence[int], state: State) -> None:
        if not slots:
            return
        with self._torch.inference_mode():
            idx = self._idx(slots)
            n = len(slots)
            for k, t in self.tensors.items():
                t.index_copy_(0, idx, state[k][:n].to(dtype=t.dtype, device=t.device))


class NumpySlabStorage:
    """Host arrays [capacity, *row_shape] per state name (for CPU engines such as ONNX Runtime)."""

    def __init__(self, template: Mapping[str, np.ndarray], capacity: int):
        self.capacity = int(capacity)
        self.arrays = {
            k: np.zeros((self.capacity, *np.shape(v)[1:]), dtype=np.asarray(v).dtype)
            for k, v in template.items()
        }
        self.bytes_per_session = sum(a[0].nbytes for a in self.arrays.values())

    def zero(self, slots: Sequence[int]) -> None:
        for a in self.arrays.values():
            a[list(slots)] = 0

    def gather(self, slots: Sequence[int], pad_to: int | None = None) -> State:
        n = max(len(slots), pad_to or 0)
        out = {}
        for k, a in self.arrays.items():
            rows = np.zeros((n, *a.shape[1:]), a.dtype)
            rows[: len(slots)] = a[list(slots)]
            out[k] = rows
        return out

    def scatter(self, slots: Sequence[int], state: State) -> None:
        for k, a in self.arrays.items():
            a[list(slots)] = np.asarray(state[k])[: len(slots)]


class SlabFullError(RuntimeError):
    """No free slot: the caller answers `server_busy` (WS 1013 / HTTP 503)."""


class StateSlab:
    """Free-slot bookkeeping over a `SlabStorage`. Not thread-safe: use from the event loop."""

    def __init__(self, storage: SlabStorage):
        self.storage = storage
        self.capacity = storage.capacity
        self._free = list(range(self.capacity - 1, -1, -1))  # pop() hands out slot 0 first
        self._used: set[int] = set()

    def allocate(self) -> int:
        """Take a free slot (its state must be zeroed by the caller on the device thread)."""
        if not self._free:
            raise SlabFullError(f"all {self.capacity} state slots are in use")
        slot = self._free.pop()
        self._used.add(slot)
        return slot

    def free(self, slot: int) -> None:
        if slot in self._used:
            self._used.remove(slot)
            self._free.append(slot)

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def bytes_per_session(self) -> int:
        return int(self.storage.bytes_per_session)

    @property
    def bytes_in_use(self) -> int:
        return self.in_use * self.bytes_per_session

    @property
    def bytes_total(self) -> int:
        return self.capacity * self.bytes_per_session
