"""Repeated numeric protobuf fields as numpy arrays, read from their packed wire form.

Why: a gRPC `ModelInferRequest` may carry its samples in `InferTensorContents` (e.g.
`fp32_contents`) instead of `raw_input_contents`. protobuf hands such a field over one Python
number at a time (a 2.4M-sample request: ~75 ms to make a list, ~100 ms more to make the
array), all of it holding the GIL, so every stream of the process waits. The same field in its
wire form is one packed run of bytes: fixed-width floats are a `np.frombuffer`, varint integers
decode in a few vectorised passes. Re-serialising the contents message is one copy in C.
"""

from __future__ import annotations

import numpy as np

WIRE_VARINT, WIRE_FIXED64, WIRE_LEN, WIRE_FIXED32 = 0, 1, 2, 5
#: how a packed field's elements are laid out: a numpy dtype (fixed width) or a varint kind
FIXED = {"float": np.dtype("<f4"), "double": np.dtype("<f8")}
SIGNED_VARINT = frozenset({"int32", "int64"})  # two's complement, negatives as 10 bytes
UNSIGNED_VARINT = frozenset({"uint32", "uint64", "bool"})
EMPTY = {"float": np.float32, "double": np.float64, "int32": np.int32, "int64": np.int64,
         "uint32": np.uint32, "uint64": np.uint64, "bool": np.uint64}
_TYPE_NAMES = {2: "float", 1: "double", 5: "int32", 3: "int64", 13: "uint32", 4: "uint64",
               8: "bool"}  # FieldDescriptor.TYPE_* -> name


class WireError(ValueError):
    """The bytes are not the wire form expected (truncated, or a field not packed)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def packed_payload(message: bytes, number: int) -> bytes:
    """The concatenated payloads of field `number` (length-delimited, i.e. packed) of a
    serialized message; other fields are skipped. WireError when the field appears unpacked."""
    parts, pos, end = [], 0, len(message)
    while pos < end:
        tag, pos = _varint(message, pos)
        field, wire = tag >> 3, tag & 7
        if wire == WIRE_LEN:
            size, pos = _varint(message, pos)
            if pos + size > end:
                raise WireError("truncated field")
            if field == number:
                parts.append(message[pos:pos + size])
            pos += size
        elif field == number:
            raise WireError(f"field {number} is not packed")
        elif wire == WIRE_VARINT:
            _, pos = _varint(message, pos)
        elif wire == WIRE_FIXED64:
            pos += 8
        elif wire == WIRE_FIXED32:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire}")
    if pos != end:
        raise WireError("truncated message")
    return b"".join(parts) if len(parts) != 1 else parts[0]


def decode_varints(payload: bytes, low_bytes: int = 10) -> np.ndarray:
    """Every varint of a packed run as uint64, in one gather per byte position (whole-array
    numpy passes, which let other threads run). `low_bytes=5` reads only the first five bytes
    of each (35 bits): enough for 32-bit fields, whose negative values carry five more bytes
    of sign extension."""
    b = np.frombuffer(payload, np.uint8)
    if b.size == 0:
        return np.zeros(0, np.uint64)
    if b[-1] & 0x80:
        raise WireError("truncated varint")
    ends = np.flatnonzero(b < 0x80)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    longest = int((ends - starts).max()) + 1
    if longest > 10:
        raise WireError("varint longer than 10 bytes")
    out = (b[starts] & 0x7F).astype(np.uint64)
    for k in range(1, min(longest, low_bytes)):
        pos = starts + k
        inside = pos <= ends
        np.minimum(pos, ends, out=pos)
        part = (b[pos] & 0x7F).astype(np.uint64)
        part <<= np.uint64(7 * k)
        part *= inside
        out |= part
    return out


def repeated_array(message, field_name: str) -> np.ndarray:
    """The repeated numeric field `field_name` of `message` as a numpy array (float32,
    float64, int32, int64, uint32 or uint64), equal to
    `np.array(list(getattr(message, field_name)))`."""
    fd = message.DESCRIPTOR.fields_by_name[field_name]
    kind = _TYPE_NAMES.get(fd.type)
    if kind is None:
        raise TypeError(f"{field_name}: not a numeric field")
    count = len(getattr(message, field_name))
    if count == 0:
        return np.zeros(0, EMPTY[kind])
    payload = packed_payload(message.SerializeToString(), fd.number)
    if kind in FIXED:
        arr = np.frombuffer(payload, FIXED[kind])
    else:
        if kind == "int32":
            arr = (decode_varints(payload, 5) & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)
        elif kind == "uint32":
            arr = decode_varints(payload, 5).astype(np.uint32)
        else:
            arr = decode_varints(payload)
            if kind in SIGNED_VARINT:
                arr = arr.view(np.int64)
    if arr.size != count:
        raise WireError(f"{field_name}: {arr.size} elements on the wire, {count} in the message")
    return arr


class RepeatedField:
    """A repeated numeric field, converted only when numpy asks for it (`np.asarray`): where
    the server decodes tensors (its decode threads, for a big request), not on the event loop
    that received the message. Serialising the contents holds the GIL (~2 ms per MB); the
    varint decode is numpy work that lets other threads run."""

    def __init__(self, message, field_name: str):
        self.message, self.field_name = message, field_name

    def __len__(self) -> int:
        return len(getattr(self.message, self.field_name))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = repeated_array(self.message, self.field_name)
        return arr if dtype is None else arr.astype(dtype, copy=False)
