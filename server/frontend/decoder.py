"""Byte reassembly: WebSocket binary messages (any split) -> float32 sample rows [n, C]."""

from __future__ import annotations

import numpy as np

from server.errors import StreamError

#: encoding -> (numpy dtype, bytes per value, scale)
ENCODINGS: dict[str, tuple[str, int, float]] = {
    "pcm_s16le": ("<i2", 2, 1.0 / 32768.0),
    "f32le": ("<f4", 4, 1.0),
}


class SampleDecoder:
    """Keeps the bytes of an incomplete sample between messages; drops `skip` duplicate samples
    first (a resume that re-sends what the server already holds)."""

    def __init__(self, encoding: str, channels: int, skip: int = 0):
        dtype, width, scale = ENCODINGS[encoding]
        self.encoding, self.channels = encoding, channels
        self._dtype = np.dtype(dtype)
        self._scale = np.float32(scale)
        self.sample_bytes = width * channels
        self.pending = b""
        self.skip = skip

    def feed(self, data: bytes) -> np.ndarray:
        """Samples of `data` (after the bytes kept from the last call). On a StreamError
        nothing changes: the caller may hand the same bytes in again."""
        if self.pending:
            data = self.pending + data
        whole = len(data) - len(data) % self.sample_bytes
        if not whole:
            self.pending = bytes(data)
            return np.zeros((0, self.channels), np.float32)
        values = np.frombuffer(data, dtype=self._dtype, count=whole // self._dtype.itemsize)
        if self.encoding == "f32le":
            if not np.isfinite(values).all():
                raise StreamError("non_finite", "NaN or Inf in the f32le samples")
            rows = values.astype(np.float32).reshape(-1, self.channels)
        else:
            rows = (values.astype(np.float32) * self._scale).reshape(-1, self.channels)
        self.pending = bytes(data[whole:]) if whole < len(data) else b""
        if self.skip:
            dropped = min(self.skip, len(rows))
            rows = rows[dropped:]
            self.skip -= dropped
        return rows
