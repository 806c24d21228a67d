"""The Open Inference Protocol endpoints (HTTP and gRPC) against malformed requests:
regressions of what a seeded protocol fuzz of them found, each answered 500 / UNKNOWN
or wrongly accepted before its fix."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, free_port

pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2 as pb  # noqa: E402  (the public proto, not ours)

SEED = 20250311
N_CASES = 300
WORKERS = 4
CALL_TIMEOUT = 10.0  # every call's deadline: past it, a hang
TOL = 1e-5
TINY = ("tiny", "tiny2", "tinynone", "tinybi", "tinyema")
SHIPPED = ("ecg-s4d", "fsdd-s4d")
MAX_SEQUENCE = 16000 * 60  # the server's max_sequence_samples (default)
MAX_BATCH = 64  # max_batch_sequences (default)
HL = "Inference-Header-Content-Length"
SERVICE = "/inference.GRPCInferenceService/"
#: HTTP status of an error -> the gRPC status PROTOCOL.md maps it to
GRPC_OF = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
           409: grpc.StatusCode.ABORTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
           415: grpc.StatusCode.INVALID_ARGUMENT}
NP = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT8": "i1", "INT16": "<i2",
      "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4",
      "UINT64": "<u8"}
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents",
            "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
            "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents"}
UNSET = object()


@dataclass(frozen=True)
class Spec:
    channels: int
    patch: int
    classes: tuple
    streamable: bool


SPECS: dict[str, Spec] = {}  # filled from the server's /v1/models
STREAMABLE: list[str] = []


@pytest.fixture(scope="module")
def srv(start_server, checkpoint_dir, tmp_path_factory):
    """The tiny test models and two shipped checkpoints, in one folder (symlinks)."""
    folder = tmp_path_factory.mktemp("oip-fuzz-checkpoints")
    for name in TINY:
        (folder / name).symlink_to(checkpoint_dir / name, target_is_directory=True)
    for name in SHIPPED:
        (folder / name).symlink_to(ROOT / "checkpoints" / name, target_is_directory=True)
    h = start_server(checkpoints=folder, grpc_port=free_port(), idle_ttl_s=120.0)
    for m in httpx.get(f"{h.base_url}/v1/models", timeout=10).json()["models"]:
        SPECS[m["name"]] = Spec(m["input_channels"], m["patch_size"], tuple(m["classes"]),
                                m["streamable"])
    STREAMABLE[:] = [n for n, s in SPECS.items() if s.streamable]
    assert set(SPECS) == set(TINY) | set(SHIPPED)
    return h


# ---- regressions of what the fuzz found -------------------------------------------------------
def _oip_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def _infer_json(srv, inputs: list, **doc) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/v2/models/tiny/infer", json={"inputs": inputs, **doc},
                      timeout=30)


def test_binary_header_that_is_not_json_is_a_400(srv):
    """A binary tensor request whose JSON header does not parse (here: cut short by too small
    an Inference-Header-Content-Length) answered 500 `internal error (AttributeError)`: the
    JSON parser's error path called `startswith` on the header, a memoryview."""
    x = np.zeros(8, "<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(x)}}]}).encode()
    for n in (len(header) - 1, 5, 1):
        r = httpx.post(f"{srv.base_url}/v2/models/tiny/infer", content=header + x,
                       headers={HL: str(n)}, timeout=30)
        assert "inference header" in _oip_error(r, 400)
    r = httpx.post(f"{srv.base_url}/v2/models/tiny/infer", content=header + x,
                   headers={HL: str(len(header))}, timeout=30)
    assert r.status_code == 200, r.text


def test_header_length_must_be_ascii_digits(srv):
    """Inference-Header-Content-Length "\u00b2" (`str.isdigit` passes it, `int` refuses it) or of
    5000 digits (`int` refuses more than 4300) answered 500 `internal error (ValueError)`."""
    body = b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}'
    for value in (b"\xb2", b"\xb9\xb2", b"9" * 5000, "\u0661\u0662".encode()):
        r = httpx.post(f"{srv.base_url}/v2/models/tiny/infer", content=body,
                       headers={HL: value}, timeout=30)
        assert HL in _oip_error(r, 400)
    r = httpx.post(f"{srv.base_url}/v2/models/tiny/infer", content=body,
                   headers={HL: "0" * 5000 + str(len(body))}, timeout=30)
    assert r.status_code == 200, r.text  # leading zeros are still a number


def test_repository_index_body_parsed_like_every_other(srv):
    """POST /v2/repository/index parsed its body with the stdlib's json: a deeply nested body
    (RecursionError) or an integer of 5000 digits (ValueError) answered 500."""
    for body in (b"[" * 100_000, b"1" * 5000, b'{"ready": NaN}'):
        _oip_error(httpx.post(f"{srv.base_url}/v2/repository/index", content=body, timeout=30),
                   400)
    r = httpx.post(f"{srv.base_url}/v2/repository/index", content=b'{"ready": true}', timeout=30)
    assert r.status_code == 200 and {m["name"] for m in r.json()} == set(SPECS)


def test_grpc_message_that_does_not_parse(srv, caplog):
    """A gRPC request that is not a valid message (garbage, truncated, a string field that is
    not UTF-8) was answered UNKNOWN `Unexpected <class 'DecodeError'>`, with a traceback
    logged by grpc for every one: now INVALID_ARGUMENT, nothing logged, and on
    ModelStreamInfer an `error_message` after which the stream goes on."""
    good = pb.ModelInferRequest(model_name="tiny", id="ok")
    good.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    good.raw_input_contents.append(np.zeros(4, "<f4").tobytes())
    good = good.SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{srv.settings.grpc_port}") as ch:
        for rpc, resp in (("ModelInfer", pb.ModelInferResponse),
                          ("ModelMetadata", pb.ModelMetadataResponse),
                          ("ServerLive", pb.ServerLiveResponse)):
            call = ch.unary_unary(SERVICE + rpc, request_serializer=bytes,
                                  response_deserializer=resp.FromString)
            bad_ones = [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x80"]
            if rpc == "ModelInfer":
                bad_ones += [b"\x0a\x02\xc3\x28", good[:-1]]
            for payload in bad_ones:
                with pytest.raises(grpc.RpcError) as ei:
                    call(payload, timeout=10)
                assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value
                assert "not a valid inference." in ei.value.details()
        stream = ch.stream_stream(SERVICE + "ModelStreamInfer", request_serializer=bytes,
                                  response_deserializer=pb.ModelStreamInferResponse.FromString)
        answers = list(stream(iter([b"\xff\xff", good, b"\x0a\x02\xc3\x28", good]), timeout=10))
    assert [bool(a.error_message) for a in answers] == [True, False, True, False], answers
    assert "not a valid inference.ModelInferRequest" in answers[0].error_message
    assert answers[1].infer_response.id == "ok"
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not logged, [r.getMessage() for r in logged]


def test_json_data_must_be_numbers(srv):
    """JSON `data` of strings or booleans ("0.5", true) was read as numbers (numpy converts
    them); /v1 predict refuses them, and /v2 now does too."""
    for data in (["0.5", "1", "2"], [True, False, True], [0.5, "1", 2.0], ["abc"] * 3):
        spec = {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": data}
        assert "numbers" in _oip_error(_infer_json(srv, [spec]), 400)
    r = httpx.post(f"{srv.base_url}/v1/models/tiny/predict", json={"inputs": [["0.5", "1"]]},
                   timeout=30)
    assert r.status_code == 400, r.text
    for data in ([1, 2, 3], [0.5, 1, 2.0], [[0.5, 1, 2]], [[0.5], [1], [2]]):  # flat or nested
        spec = {"name": "input", "shape": [1, 3], "datatype": "INT32", "data": data}
        assert _infer_json(srv, [spec]).status_code == 200


def test_sequence_id_false_or_float_zero_is_refused(srv):
    """`sequence_id` false or 0.0 equals 0 in Python: both were taken for Triton's "no
    sequence" (the request ran as a batch) while true and 1.5 were refused."""
    spec = {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0.0, 0.5, 1.0]}
    for sid in (False, 0.0, -0.0, True, 1.5):
        r = _infer_json(srv, [spec], parameters={"sequence_id": sid, "sequence_start": True})
        assert "sequence_id must be" in _oip_error(r, 400)
    req = pb.ModelInferRequest(model_name="tiny")
    req.parameters["sequence_id"].bool_param = False
    req.inputs.add(name="input", datatype="FP32", shape=[1, 3])
    req.raw_input_contents.append(np.zeros(3, "<f4").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{srv.settings.grpc_port}") as ch:
        call = ch.unary_unary(SERVICE + "ModelInfer", request_serializer=bytes,
                              response_deserializer=pb.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as ei:
            call(req.SerializeToString(), timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for sid in (0, ""):  # Triton's "no sequence": a batch request
        r = _infer_json(srv, [spec], parameters={"sequence_id": sid, "sequence_start": True})
        assert r.status_code == 200 and "parameters" not in r.json(), r.text


def test_long_sequence_id_error_keeps_its_reason(srv):
    """Error messages are cut at 500 characters, and a sequence error named its id in full: for
    an id of 500 characters the message no longer said what was wrong."""
    spec = {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0.0, 0.5, 1.0]}
    sid = "s" * 2000
    r = _infer_json(srv, [spec], parameters={"sequence_id": sid})
    assert "is not open" in _oip_error(r, 400)
    params = {"sequence_id": sid, "sequence_start": True}
    assert _infer_json(srv, [spec], parameters=params).status_code == 200
    assert "already started" in _oip_error(_infer_json(srv, [spec], parameters=params), 409)
    r = _infer_json(srv, [spec], parameters={"sequence_id": sid, "sequence_end": True})
    assert r.status_code == 200 and r.json()["parameters"]["sequence_offset"] == 6
