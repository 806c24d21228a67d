"""Messages between front-ends and engines: a msgpack header plus raw numpy buffers.

A message is `(header: dict, arrays: list[np.ndarray])`. The header refers to arrays by index,
so sample data and results never go through msgpack (no copies, no pickle). In one process the
pair is handed over as is; over pyzmq it travels as frames `[header, meta, *buffers]` where meta
lists each array's dtype and shape.

Front-end -> engine header:
  ep    engine epoch the sender believes it talks to (stale-epoch ops are refused)
  feed  [[model, slots_i, gens_i, counts_i], ...]  new samples per session (per model: int32
        slot/generation/count arrays; the samples are in the sender's staging ring of the
        model, at the sessions' slots and offsets: engine/buffers.py)
  ops   [{"op": "open" | "flush" | "detach" | "close" | "predict" | "ping" | "snapshot" |
        "restore" | "park", "req": int, ...}]  (the last three: engine/sessions_ops.py)
        applied after `feed`, in order
Engine -> front-end header:
  ep    the engine's epoch;  models: metadata (only in replies to "hello")
  prog  [[model, slots_i, gens_i, consumed_i, probs_i], ...]  every stepped session: consumed
        offset (int64) and class probabilities (float32 [n, K]) after the step
  ctl   [{"req": int, ...}]  replies to ops;  evt  [{"ev": "closed" | "stored", ...}] unsolicited
        events (a session closed by the engine; a snapshot of it stored up to "offset")
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()

Message = tuple[dict, list[np.ndarray]]


def encode(header: dict, arrays: list[np.ndarray]) -> list[Any]:
    """Frames for zmq `send_multipart`: header, array meta, then each array's raw buffer."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    meta = [(a.dtype.str, a.shape) for a in arrays]
    return [_enc.encode(header), _enc.encode(meta), *(memoryview(a).cast("B") for a in arrays)]


def decode(frames: list[Any]) -> Message:
    """Inverse of `encode`; arrays are read-only views of the received buffers (no copy)."""
    frames = [f.buffer if hasattr(f, "buffer") else f for f in frames]  # zmq.Frame -> memoryview
    header = _dec.decode(frames[0])
    meta = _dec.decode(frames[1])
    arrays = []
    for (dtype, shape), buf in zip(meta, frames[2:], strict=True):
        arrays.append(np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape))
    return header, arrays


class ArrayList:
    """Collects arrays for one message and hands out their indices for the header."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def add(self, a: np.ndarray) -> int:
        self.arrays.append(a)
        return len(self.arrays) - 1


def lift_arrays(msg: dict, arrays: ArrayList) -> dict:
    """Replace top-level array values of an op or reply by `{"$a": index}` references."""
    if not any(isinstance(v, np.ndarray) for v in msg.values()):
        return msg
    return {k: {"$a": arrays.add(v)} if isinstance(v, np.ndarray) else v for k, v in msg.items()}


def drop_arrays(msg: dict, arrays: list[np.ndarray]) -> dict:
    """Inverse of `lift_arrays`."""
    for k, v in msg.items():
        if isinstance(v, dict) and "$a" in v:
            msg[k] = arrays[v["$a"]]
    return msg
