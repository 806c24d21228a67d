"""Session snapshots: one streaming session as pickle-free, versioned bytes.

A snapshot holds everything needed to continue a stream exactly on another process or device:
the model's identity, the session's state row (every layer's SSM modes, running pooling), its
offsets, the samples received but not yet run through the model, and its emit settings.

Layout (FORMAT_VERSION 2): one safetensors file (8-byte little-endian header length, JSON
header, raw little-endian tensor data; no code is ever executed on load).

Tensors:
    ``state.<name>``  one session's row of each state array, without the batch dimension
                      (e.g. ``state.x_re`` [L, H, M], ``state.pool`` [H], ``state.count`` [1])
    ``buffered``      float32 [n, C]: received samples not yet consumed (n may be 0)
    ``last_probs``    float32 [K]: the last prediction (absent before the first one)

Header ``__metadata__`` (all values are strings, as safetensors requires):
    ``format``            "s4d-session-snapshot"
    ``format_version``    "2" (1 had no ``owner_key``: refused, its owner is unknown)
    ``model``             model name;  ``model_hash``  sha256 of config.json + model.safetensors
    ``session_id``, ``encoding`` ("pcm_s16le" | "f32le")
    ``owner_key``         NAME of the API key that opened the session ("" = opened without
                          keys): a resume on any replica with another key is refused
                          (``session_forbidden``). A name, never the key or its hash.
    ``channels``, ``emit_every``, ``received``, ``consumed``, ``segment_consumed``  (decimal)
    ``created_unix``, ``taken_unix``  (wall-clock seconds, ``repr`` of a float)
    ``checksum``          "crc32:XXXXXXXX" over every tensor's name, dtype, shape and bytes

Invariant: ``received == consumed + len(buffered)``: a snapshot is taken between steps, never
while some of its samples are inside a running step (they would be lost on restore). Bytes of an
incomplete sample are not kept: the client resends from ``received``, a whole-sample offset.

Restoring continues exactly because state, pooling and the partial frame are the whole of a
session's history (DESIGN.md "Exact chunked streaming"); the same arrays serve the torch slab
(any device) and the ONNX Runtime slab (host NumPy), which share names, shapes and float32.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from server.session_store import MAX_SESSION_ID

FORMAT = "s4d-session-snapshot"
FORMAT_VERSION = 2
STATE_PREFIX = "state."
ENCODINGS = ("pcm_s16le", "f32le")

_INT_FIELDS = ("channels", "emit_every", "received", "consumed", "segment_consumed")
_FLOAT_FIELDS = ("created_unix", "taken_unix")
_STR_FIELDS = ("model", "model_hash", "session_id", "encoding", "owner_key")
#: offsets and emit_every live in int64 arrays of the engine's buffers
_MAX_INT = 2**63 - 1
#: an API key NAME as the keys file allows it (server/auth.py), or "" for no key
_OWNER_KEY = re.compile(r"[A-Za-z0-9_.@-]{0,64}")

#: error code -> HTTP status for the operator routes that accept snapshots
HTTP_STATUS = {
    "snapshot_corrupt": 400,
    "snapshot_version": 409,
    "snapshot_model_mismatch": 409,
    "snapshot_state_mismatch": 409,
}


class SnapshotError(ValueError):
    """A snapshot that cannot be used: ``code`` is a wire-protocol error code (PROTOCOL.md)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = HTTP_STATUS.get(code, 400)


@dataclass(frozen=True)
class Snapshot:
    """One session, frozen between two steps. ``state`` rows carry no batch dimension."""

    model: str
    model_hash: str
    session_id: str
    state: Mapping[str, np.ndarray]
    received: int
    consumed: int
    segment_consumed: int
    buffered: np.ndarray
    channels: int
    emit_every: int
    encoding: str
    last_probs: np.ndarray | None = None
    owner_key: str = ""  # the API key NAME that owns the session; "" = opened without keys
    created_unix: float = 0.0
    taken_unix: float = field(default_factory=time.time)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(f"invalid snapshot of session {self.session_id!r}: {problem}")

    def problem(self) -> str | None:
        """Why the fields are inconsistent, or None."""
        b = self.buffered
        if not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.ndim != 2:
            return "buffered must be a float32 array [n, channels]"
        if b.shape[1] != self.channels or self.channels < 1:
            return f"buffered has {b.shape[1]} channels, the session {self.channels}"
        if min(self.received, self.consumed, self.segment_consumed, self.emit_every) < 0:
            return "offsets and emit_every must be >= 0"
        if max(self.received, self.consumed, self.segment_consumed, self.emit_every) > _MAX_INT:
            return "offsets and emit_every must fit in 64 bits"
        if self.received != self.consumed + len(b):
            return (f"received ({self.received}) != consumed ({self.consumed}) + buffered "
                    f"({len(b)}): taken while samples were inside a step?")
        if self.segment_consumed > self.consumed:
            return "segment_consumed > consumed"
        if not isinstance(self.session_id, str) or not 0 < len(self.session_id) <= MAX_SESSION_ID:
            return f"session_id must be 1 to {MAX_SESSION_ID} characters (a store holds no other)"
        if not isinstance(self.owner_key, str) or not _OWNER_KEY.fullmatch(self.owner_key):
            return f"owner_key {str(self.owner_key)[:80]!r} is not an API key name"
        if self.encoding not in ENCODINGS:
            return f"unknown encoding {self.encoding!r}"
        if self.last_probs is not None and (
            self.last_probs.dtype != np.float32 or self.last_probs.ndim != 1
        ):
            return "last_probs must be a float32 vector"
        if not self.state:
            return "no state arrays"
        for name, a in self.state.items():
            if not isinstance(a, np.ndarray) or not name or "." in name:
                return f"state {name!r} must be a NumPy array with a plain name"
        return None


def owner_allows(owner_key: str | None, key: str | None) -> bool:
    """May the API key named `key` (None: no key) use a session owned by `owner_key`?
    A session opened without keys ("" / None) is anyone's, as its id is its only credential;
    one opened with a key is that key's alone, on every replica."""
    return not owner_key or owner_key == key


# ---- model identity ---------------------------------------------------------------------------
def checkpoint_hash(path: str | Path) -> str:
    """sha256 of a checkpoint's config.json + model.safetensors (names and bytes).

    The same digest keys the ONNX export cache (``model.export.checkpoint_digest``). Cached per
    (folder, file sizes and mtimes), so an engine may call it for every snapshot.
    """
    path = Path(path).resolve()
    stamp = []
    for name in ("config.json", "model.safetensors"):
        st = os.stat(path / name)
        stamp.append((st.st_size, st.st_mtime_ns))
    return _hash_cached(str(path), tuple(stamp))


@functools.lru_cache(maxsize=64)
def _hash_cached(path: str, stamp: tuple) -> str:
    from model.export import checkpoint_digest

    return checkpoint_digest(path)


# ---- slab rows <-> NumPy ----------------------------------------------------------------------
def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like as a host NumPy array."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        return value.detach().cpu().numpy()
    return np.asarray(value)


def capture_state(storage, slot: int) -> dict[str, np.ndarray]:
    """One slot's state rows (no batch dimension) from any ``SlabStorage``, as host arrays.

    Call it on the device-worker thread, between steps (gather is ordered with the steps there).
    """
    return {k: np.ascontiguousarray(to_numpy(v)[0]) for k, v in storage.gather([slot]).items()}


def restore_state(storage, slot: int, state: Mapping[str, np.ndarray]) -> None:
    """Write snapshot rows into ``slot`` of any ``SlabStorage`` (torch on any device, or NumPy).

    Raises ``SnapshotError("snapshot_state_mismatch")`` when names, shapes or dtypes differ
    from the slab's (the slab is left untouched then). Call it on the device-worker thread.
    """
    template = storage.gather([slot])
    if set(template) != set(state):
        raise SnapshotError("snapshot_state_mismatch",
                            f"snapshot state {sorted(state)} != this model's {sorted(template)}")
    rows = {}
    for k, t in template.items():
        row = state[k]
        shape = tuple(t.shape[1:])
        if tuple(row.shape) != shape:
            raise SnapshotError("snapshot_state_mismatch",
                                f"state {k!r} has shape {tuple(row.shape)}, this model {shape}")
        if hasattr(t, "detach"):
            import torch

            src = torch.from_numpy(np.ascontiguousarray(row)[None])
            if src.dtype != t.dtype:
                raise SnapshotError("snapshot_state_mismatch",
                                    f"state {k!r} is {src.dtype}, this slab {t.dtype}")
            rows[k] = src.to(t.device)
        else:
            if row.dtype != t.dtype:
                raise SnapshotError("snapshot_state_mismatch",
                                    f"state {k!r} is {row.dtype}, this slab {t.dtype}")
            rows[k] = row[None]
    storage.scatter([slot], rows)


# ---- bytes ------------------------------------------------------------------------------------
def _checksum(tensors: Mapping[str, np.ndarray]) -> str:
    crc = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        crc = zlib.crc32(f"{name}|{a.dtype.str}|{a.shape}".encode(), crc)
        crc = zlib.crc32(a.data, crc) if a.size else crc
    return f"crc32:{crc:08x}"


def encode(snap: Snapshot) -> bytes:
    """Snapshot -> safetensors bytes (layout in the module docstring)."""
    tensors = {f"{STATE_PREFIX}{k}": np.ascontiguousarray(v) for k, v in snap.state.items()}
    tensors["buffered"] = np.ascontiguousarray(snap.buffered)
    if snap.last_probs is not None:
        tensors["last_probs"] = np.ascontiguousarray(snap.last_probs)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    meta.update({k: str(getattr(snap, k)) for k in _STR_FIELDS})
    meta.update({k: str(int(getattr(snap, k))) for k in _INT_FIELDS})
    meta.update({k: repr(float(getattr(snap, k))) for k in _FLOAT_FIELDS})
    meta["checksum"] = _checksum(tensors)
    return st_save(tensors, metadata=meta)


def read_metadata(data: bytes) -> dict[str, str]:
    """The header metadata alone (cheap: no tensor is read). Raises ``snapshot_corrupt``."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 8:
        raise SnapshotError("snapshot_corrupt", "not a session snapshot (too short)")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > len(data) - 8 or n > 1 << 20:
        raise SnapshotError("snapshot_corrupt", "not a session snapshot (bad header length)")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
        meta = header["__metadata__"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError("snapshot_corrupt", "not a session snapshot (bad header)") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SnapshotError("snapshot_corrupt", f"not a {FORMAT} (format={meta.get('format')!r})")
    return meta


def decode(data: bytes, *, expect_model: str | None = None,
           expect_hash: str | None = None) -> Snapshot:
    """Bytes -> Snapshot, refusing another format version or other weights.

    Codes: ``snapshot_corrupt`` (truncated, garbage, checksum or field errors),
    ``snapshot_version`` (another FORMAT_VERSION), ``snapshot_model_mismatch`` (another model
    name or weights hash than expected).
    """
    meta = read_metadata(data)
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise SnapshotError("snapshot_version",
                            f"snapshot format version {str(version)[:20]}; this server reads "
                            f"{FORMAT_VERSION} only (a snapshot of another release cannot be "
                            "resumed here: start a new session)")
    if expect_model is not None and meta.get("model") != expect_model:
        raise SnapshotError("snapshot_model_mismatch",
                            f"snapshot of model {meta.get('model')!r}, not {expect_model!r}")
    if expect_hash is not None and meta.get("model_hash") != expect_hash:
        raise SnapshotError(
            "snapshot_model_mismatch",
            f"snapshot of model {meta.get('model')!r} was taken with other weights "
            f"(sha256 {str(meta.get('model_hash'))[:12]}..., loaded {expect_hash[:12]}...)")
    try:
        tensors = st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise SnapshotError("snapshot_corrupt", f"unreadable snapshot tensors: {exc}") from exc
    if meta.get("checksum") != _checksum(tensors):
        raise SnapshotError("snapshot_corrupt", "snapshot checksum mismatch (damaged bytes)")
    stray = [k for k in tensors
             if k not in ("buffered", "last_probs") and not k.startswith(STATE_PREFIX)]
    if stray:
        raise SnapshotError("snapshot_corrupt", f"unexpected tensors in the snapshot: {stray}")
    try:
        fields: dict[str, Any] = {k: meta[k] for k in _STR_FIELDS}
        fields.update({k: int(meta[k]) for k in _INT_FIELDS})
        fields.update({k: float(meta[k]) for k in _FLOAT_FIELDS})
        state = {k[len(STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
        return Snapshot(state=state, buffered=tensors["buffered"],
                        last_probs=tensors.get("last_probs"), **fields)
    except (KeyError, ValueError, TypeError) as exc:
        raise SnapshotError("snapshot_corrupt", f"inconsistent snapshot: {exc}") from exc
