"""Repeated numeric protobuf fields read from their packed wire form equal protobuf's own
element-by-element reading, for every numeric type and its extremes; gRPC contents are left
unconverted on the event loop and converted where tensors are decoded."""

from __future__ import annotations

import numpy as np
import pytest

from server.oip_core import tensor_array
from server.oip_grpc import request_from_proto
from server.proto import grpc_service_pb2 as pb
from server.proto_wire import (
    RepeatedField,
    WireError,
    decode_varints,
    packed_payload,
    repeated_array,
)

rng = np.random.default_rng(7)
EXTREMES = {
    "int_contents": [0, 1, -1, 127, 128, -128, 2**31 - 1, -2**31, 300, -300],
    "int64_contents": [0, 1, -1, 2**63 - 1, -2**63, 2**35, -2**35],
    "uint_contents": [0, 1, 127, 128, 16383, 16384, 2**32 - 1],
    "uint64_contents": [0, 1, 2**63, 2**64 - 1, 2**56 - 1, 2**56],
    "bool_contents": [True, False, True],
    "fp32_contents": [0.0, -0.0, 1.5, -3.25, float("inf"), -float("inf"), 3.4e38, 1e-45],
    "fp64_contents": [0.0, -0.0, 1e308, -1e-308, 5e-324, float("inf")],
}
RANDOM = {
    "int_contents": lambda n: rng.integers(-2**31, 2**31, n).tolist(),
    "int64_contents": lambda n: rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64).tolist(),
    "uint_contents": lambda n: rng.integers(0, 2**32, n).tolist(),
    "uint64_contents": lambda n: rng.integers(0, 2**64 - 1, n, dtype=np.uint64).tolist(),
    "bool_contents": lambda n: (rng.random(n) < 0.5).tolist(),
    "fp32_contents": lambda n: rng.standard_normal(n).astype(np.float32).tolist(),
    "fp64_contents": lambda n: rng.standard_normal(n).tolist(),
}


@pytest.mark.parametrize("field", sorted(RANDOM))
def test_every_numeric_field_equals_protobufs_own_reading(field):
    c = pb.InferTensorContents()
    values = EXTREMES[field] + RANDOM[field](5000)
    getattr(c, field).extend(values)
    # another field beside it: its bytes are skipped, not mixed in
    other = "fp64_contents" if field != "fp64_contents" else "int_contents"
    getattr(c, other).extend([1, 2, 3])
    c = pb.InferTensorContents.FromString(c.SerializeToString())
    got = repeated_array(c, field)
    want = np.array(list(getattr(c, field)), dtype=got.dtype)
    assert got.shape == want.shape == (len(values),)
    if got.dtype.kind == "f":
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))  # bit-exact, -0.0
    else:
        np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.asarray(RepeatedField(c, field), dtype=np.float64),
                          want.astype(np.float64))


def test_empty_field_and_non_numeric_field():
    c = pb.InferTensorContents()
    assert repeated_array(c, "fp32_contents").size == 0
    assert repeated_array(c, "int_contents").dtype == np.int32
    with pytest.raises(TypeError):
        repeated_array(c, "bytes_contents")


def test_wire_errors():
    with pytest.raises(WireError):
        decode_varints(bytes([0x80, 0x80]))  # ends inside a varint
    with pytest.raises(WireError):
        decode_varints(bytes([0xFF] * 11 + [0x01]))  # 12 bytes
    with pytest.raises(WireError):
        packed_payload(bytes([0x32, 0x08, 0, 0]), 6)  # field 6, 8 bytes announced, 2 there
    # field 6 sent unpacked (wire type 5, one float): not what a packed reader may guess at
    with pytest.raises(WireError, match="not packed"):
        packed_payload(bytes([0x35, 0, 0, 0x80, 0x3F]), 6)
    # the same element of another field is skipped
    assert packed_payload(bytes([0x35, 0, 0, 0x80, 0x3F]), 7) == b""


def test_grpc_contents_stay_unconverted_until_decoded():
    """request_from_proto runs on the event loop: it must not walk the elements."""
    x = rng.standard_normal(3 * 400).astype(np.float32)
    q = rng.integers(-32768, 32768, 3 * 400).astype(np.int32)
    for arr, datatype, field in ((x, "FP32", "fp32_contents"), (q, "INT16", "int_contents")):
        r = pb.ModelInferRequest(model_name="m")
        t = r.inputs.add(name="input", datatype=datatype, shape=[3, 400])
        getattr(t.contents, field).extend(arr.tolist())
        req = request_from_proto(pb.ModelInferRequest.FromString(r.SerializeToString()))
        assert isinstance(req.inputs[0].values, RepeatedField)
        np.testing.assert_array_equal(tensor_array(req.inputs[0], arr.size), arr.astype(np.float64))
