"""Open Inference Protocol v2 over HTTP and gRPC, driven by the real Triton clients.

One server (tiny models, gRPC on) for the module; tritonclient.http / tritonclient.grpc
from PyPI talk to it unmodified. Probabilities must equal /v1 predict within 1e-6.
"""

from __future__ import annotations

import gzip
import json
import queue
import time
import zlib

import httpx
import numpy as np
import pytest

from tests.conftest import free_port

th = pytest.importorskip("tritonclient.http")
tg = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOL = 1e-6


@pytest.fixture(scope="module")
def srv(start_server, checkpoint_dir):
    return start_server(checkpoints=checkpoint_dir, grpc_port=free_port())


@pytest.fixture(scope="module")
def http(srv):
    c = th.InferenceServerClient(srv.base_url.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(srv):
    c = tg.InferenceServerClient(f"127.0.0.1:{srv.settings.grpc_port}")
    yield c
    c.close()


def v1_probs(srv, model: str, x: np.ndarray) -> np.ndarray:
    """/v1 predict of each row of x [B, L, C] as an array [B, K] (class order of the model)."""
    r = httpx.post(f"{srv.base_url}/v1/models/{model}/predict",
                   json={"inputs": [row[:, 0].tolist() if row.shape[1] == 1 else row.tolist()
                                    for row in x]}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([list(p["probabilities"].values()) for p in r.json()["predictions"]])


def v1_labels(srv, model: str, x: np.ndarray) -> list[str]:
    r = httpx.post(f"{srv.base_url}/v1/models/{model}/predict",
                   json={"inputs": [row.tolist() for row in x]}, timeout=60)
    return [p["label"] for p in r.json()["predictions"]]


def texts(arr) -> list[str]:
    """BYTES outputs: bytes from binary tensors, str from JSON ones."""
    return [s.decode() if isinstance(s, bytes) else s for s in arr]


def signal(b: int, length: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, length, c)).astype(np.float32)


# ---- the proto is the public one ----------------------------------------------------------
def _fields(d) -> list[tuple]:
    return [(f.number, f.name, f.type, f.is_repeated,
             f.message_type.full_name if f.message_type else None,
             f.containing_oneof.name if f.containing_oneof else None) for f in d.fields]


def _compare(ours, theirs) -> None:
    assert ours.full_name == theirs.full_name
    assert _fields(ours) == _fields(theirs), ours.full_name
    for nested in ours.nested_types:
        _compare(nested, theirs.nested_types_by_name[nested.name])


def test_proto_matches_tritonclient_descriptors():
    from tritonclient.grpc import service_pb2 as triton

    from server.proto import grpc_service_pb2 as ours

    for name, desc in ours.DESCRIPTOR.message_types_by_name.items():
        theirs = triton.DESCRIPTOR.message_types_by_name[name]
        if name == "InferStatistics" or name == "ModelStatistics":
            # a prefix of Triton's fields (cache / batch / memory statistics not served)
            assert _fields(desc) == _fields(theirs)[: len(desc.fields)], name
        else:
            _compare(desc, theirs)
    svc = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    tsvc = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert svc.full_name == "inference.GRPCInferenceService"
    for m in svc.methods:
        t = tsvc.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name,
                m.client_streaming, m.server_streaming) == (
            t.input_type.full_name, t.output_type.full_name,
            t.client_streaming, t.server_streaming), m.name


def test_generated_modules_are_current(tmp_path):
    pytest.importorskip("grpc_tools")
    from pathlib import Path

    from server.proto import generate

    generate.generate(tmp_path)
    here = Path(generate.__file__).parent
    for name in ("grpc_service_pb2.py", "grpc_service_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (here / name).read_text(), (
            f"{name} is stale: run python -m server.proto.generate")


# ---- HTTP ---------------------------------------------------------------------------------
def test_http_server_and_model_metadata(http, srv):
    assert http.is_server_live() and http.is_server_ready()
    meta = http.get_server_metadata()
    assert meta["name"] == "s4d-serve" and meta["version"]
    assert {"binary_tensor_data", "statistics", "model_configuration"} <= set(meta["extensions"])
    m = http.get_model_metadata("tiny2")
    assert m["name"] == "tiny2" and m["versions"] == ["1"]
    assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, -1, 2]}]
    assert {o["name"]: o["shape"] for o in m["outputs"]} == {"probabilities": [-1, 4],
                                                            "label": [-1]}
    assert http.get_model_metadata("tiny2", model_version="1") == m
    assert http.is_model_ready("tiny") and http.is_model_ready("tiny", "1")
    cfg = http.get_model_config("tiny2")
    assert cfg["name"] == "tiny2" and cfg["input"][0]["dims"] == [-1, 2]
    assert cfg["output"][0]["dims"] == [4] and cfg["max_batch_size"] >= 1
    assert cfg["parameters"]["sample_rate"]["string_value"] == "100"
    index = http.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [
        (n, "READY") for n in sorted(["tiny", "tiny2", "tinynone", "tinybi", "tinyema"])]


@pytest.mark.parametrize("model,shape", [("tiny", (3, 200, 1)), ("tiny2", (2, 40, 2)),
                                         ("tinynone", (2, 33, 1)), ("tinybi", (1, 64, 1))])
@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_equals_v1_predict(http, srv, model, shape, binary):
    x = signal(*shape, seed=len(model))
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [th.InferRequestedOutput("probabilities", binary_data=binary),
            th.InferRequestedOutput("label", binary_data=binary)]
    r = http.infer(model, [inp], outputs=outs, request_id="req-7")
    assert r.get_response()["id"] == "req-7"
    probs = r.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (shape[0], len(v1_probs(srv, model, x)[0]))
    np.testing.assert_allclose(probs, v1_probs(srv, model, x), atol=TOL, rtol=0)
    assert texts(r.as_numpy("label")) == v1_labels(srv, model, x)


def test_http_infer_default_binary_2d_shape_and_datatypes(http, srv):
    x = signal(2, 100, 1, seed=3)
    ref = v1_probs(srv, "tiny", x)
    inp = th.InferInput("input", [2, 100], "FP32")  # [B, L] for one channel
    inp.set_data_from_numpy(x[:, :, 0])  # client defaults: binary in, binary_data_output
    r = http.infer("tiny", [inp])
    assert r.get_response()["outputs"][0]["parameters"]["binary_data_size"] > 0
    np.testing.assert_allclose(r.as_numpy("probabilities"), ref, atol=TOL, rtol=0)
    q = np.clip(np.round(x * 1000), -32768, 32767)
    ref_q = v1_probs(srv, "tiny", q.astype(np.float32))
    for dtype in (np.int16, np.int32, np.float64, np.float16):
        xt = q.astype(dtype) if dtype != np.float16 else x.astype(np.float16)
        want = ref_q if dtype != np.float16 else v1_probs(srv, "tiny", xt.astype(np.float32))
        for binary in (True, False):
            inp = th.InferInput("input", list(xt.shape), {np.int16: "INT16", np.int32: "INT32",
                                np.float64: "FP64", np.float16: "FP16"}[dtype])
            inp.set_data_from_numpy(xt, binary_data=binary)
            got = http.infer("tiny", [inp]).as_numpy("probabilities")
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=str(dtype))


def test_http_requested_outputs_and_classification(http, srv):
    x = signal(2, 64, 1, seed=5)
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = http.infer("tiny", [inp], outputs=[th.InferRequestedOutput("label", binary_data=False)])
    assert [o["name"] for o in r.get_response()["outputs"]] == ["label"]
    assert r.as_numpy("probabilities") is None
    r = http.infer("tiny", [inp], outputs=[th.InferRequestedOutput("probabilities",
                                                                  class_count=2)])
    top = r.as_numpy("probabilities")
    ref = v1_probs(srv, "tiny", x)
    assert top.shape == (2, 2)
    for row, p in zip(top, ref):
        score, idx, label = row[0].decode().split(":")
        assert int(idx) == int(np.argmax(p)) and abs(float(score) - p.max()) < 1e-5
        assert label == ["a", "b", "c"][int(idx)]


@pytest.mark.parametrize("algo", ["gzip", "deflate"])
def test_http_compressed_bodies(http, srv, algo):
    x = signal(4, 300, 1, seed=9)
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)  # large JSON: the response is compressed too
    outs = [th.InferRequestedOutput("probabilities", binary_data=False)]
    r = http.infer("tiny", [inp], outputs=outs, request_compression_algorithm=algo,
                   response_compression_algorithm=algo)
    np.testing.assert_allclose(r.as_numpy("probabilities"), v1_probs(srv, "tiny", x),
                               atol=TOL, rtol=0)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32",
                                   "data": [0.0] * 5}]}).encode()
    packed = gzip.compress(body) if algo == "gzip" else zlib.compress(body)
    resp = httpx.post(f"{srv.base_url}/v2/models/tiny/infer", content=packed,
                      headers={"Content-Encoding": algo})
    assert resp.status_code == 200, resp.text


def test_http_errors_are_oip_shaped(http, srv):
    x = signal(1, 50, 1)
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as ei:
        http.infer("nope", [inp])
    assert ei.value.status() == "404" and "no model named 'nope'" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        http.get_model_metadata("nope")
    assert ei.value.status() == "404" and "nope" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        http.infer("tiny2", [inp])  # 1 channel for a 2-channel model
    assert ei.value.status() == "400" and "channels" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        http.infer("tiny", [inp], outputs=[th.InferRequestedOutput("logits")])
    assert ei.value.status() == "400" and "unknown output 'logits'" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        http.get_model_metadata("tiny", model_version="2")
    assert ei.value.status() == "404" and "version" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        http.load_model("tiny")
    assert ei.value.status() == "400" and "not supported" in ei.value.message()
    base = f"{srv.base_url}/v2"
    raw = x.tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 50], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw) + 4}}]}).encode()
    cases = [
        ("get", "/models/nope/ready", {}, 404),
        ("get", "/no/such/route", {}, 404),
        ("delete", "/models/tiny", {}, 405),
        ("post", "/models/tiny/infer", {"content": b"{not json"}, 400),
        ("post", "/models/tiny/infer", {"content": header + raw,
                                         "headers": {"Inference-Header-Content-Length":
                                                     str(len(header))}}, 400),
        ("post", "/models/tiny/infer", {"content": header + raw,
                                         "headers": {"Inference-Header-Content-Length": "x"}}, 400),
        ("post", "/models/tiny/infer", {"json": {"inputs": [{"name": "input", "shape": [1, 5],
                                                             "datatype": "FP32",
                                                             "data": [0.0] * 4}]}}, 400),
        ("post", "/models/tiny/infer", {"json": {"inputs": [{"name": "input", "shape": [1, 2],
                                                             "datatype": "BOOL",
                                                             "data": [True, False]}]}}, 400),
        ("post", "/models/tiny/infer", {"content": b'{"inputs": [{"name": "input", "shape": '
                                                   b'[1, 2], "datatype": "FP32", "data": '
                                                   b'[0.0, NaN]}]}'}, 400),
        ("post", "/models/tiny/infer", {"content": b"xx", "headers": {"Content-Encoding": "br"}},
         415),
        # an integer datatype holds integers in its range (numpy would wrap 1000 to -24)
        ("post", "/models/tiny/infer", {"json": {"inputs": [{"name": "input", "shape": [1, 2],
                                                             "datatype": "INT8",
                                                             "data": [1000, 0]}]}}, 400),
        ("post", "/models/tiny/infer", {"json": {"inputs": [{"name": "input", "shape": [1, 2],
                                                             "datatype": "UINT16",
                                                             "data": [1.5, 2]}]}}, 400),
    ]
    for method, path, kw, status in cases:
        r = getattr(httpx, method)(base + path, **kw)
        assert r.status_code == status, (path, r.text)
        body = r.json()
        assert isinstance(body["error"], str) and body["error"], (path, body)
    # /v1 keeps its own error shape
    r = httpx.get(f"{srv.base_url}/v1/models/nope")
    assert r.json()["error"]["code"] == "unknown_model"


def test_statistics_count_requests(http, grpc_client, srv):
    before = http.get_inference_statistics("tinybi")["model_stats"][0]
    x = signal(3, 64, 1, seed=2)
    inp = th.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    http.infer("tinybi", [inp])
    bad = th.InferInput("input", [1, 3], "FP32")
    bad.set_data_from_numpy(np.array([[0.0, np.inf, 1.0]], np.float32))
    with pytest.raises(InferenceServerException):
        http.infer("tinybi", [bad])
    after = http.get_inference_statistics("tinybi")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] - before["execution_count"] == 1
    s0, s1 = before["inference_stats"], after["inference_stats"]
    assert s1["success"]["count"] - s0["success"]["count"] == 1
    assert s1["fail"]["count"] - s0["fail"]["count"] == 1
    assert s1["success"]["ns"] > s0["success"]["ns"]
    assert after["last_inference"] >= before["last_inference"] > 0 or before["inference_count"] == 0
    everyone = {m["name"] for m in http.get_inference_statistics()["model_stats"]}
    assert everyone == {"tiny", "tiny2", "tinynone", "tinybi", "tinyema"}
    g = grpc_client.get_inference_statistics("tinybi", as_json=True)["model_stats"][0]
    assert int(g["inference_count"]) == after["inference_count"]
    with pytest.raises(InferenceServerException) as ei:  # a version of no model: not "all"
        grpc_client.get_inference_statistics("", model_version="2")
    assert "INVALID_ARGUMENT" in str(ei.value.status()) and "model name" in ei.value.message()


# ---- gRPC ---------------------------------------------------------------------------------
def test_grpc_health_and_metadata(grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("tiny")
    meta = grpc_client.get_server_metadata(as_json=True)
    assert meta["name"] == "s4d-serve" and "binary_tensor_data" in meta["extensions"]
    m = grpc_client.get_model_metadata("tiny2", as_json=True)
    assert m["name"] == "tiny2" and m["versions"] == ["1"]
    assert m["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "-1", "2"]}
    index = grpc_client.get_model_repository_index(as_json=True)["models"]
    assert sorted(x["name"] for x in index) == ["tiny", "tiny2", "tinybi", "tinyema", "tinynone"]


@pytest.mark.parametrize("model,shape", [("tiny", (3, 200, 1)), ("tiny2", (2, 40, 2))])
def test_grpc_infer_equals_v1_predict(grpc_client, srv, model, shape):
    x = signal(*shape, seed=11)
    inp = tg.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # raw_input_contents
    r = grpc_client.infer(model, [inp], request_id="g1")
    assert r.get_response().id == "g1"
    np.testing.assert_allclose(r.as_numpy("probabilities"), v1_probs(srv, model, x),
                               atol=TOL, rtol=0)
    assert texts(r.as_numpy("label")) == v1_labels(srv, model, x)
    r = grpc_client.infer(model, [inp], outputs=[tg.InferRequestedOutput("label")])
    assert [o.name for o in r.get_response().outputs] == ["label"]


def test_grpc_infer_with_typed_contents(srv):
    """The typed contents fields (the non-raw form: fp32 / fp64 / int / int64 / uint), through
    Triton's own generated stub."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = signal(2, 80, 1, seed=4)
    q = np.round(x * 100).astype(np.int32)
    with grpc.insecure_channel(f"127.0.0.1:{srv.settings.grpc_port}") as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        for arr, dtype, field in ((x, "FP32", "fp32_contents"), (q, "INT32", "int_contents"),
                                  (x.astype(np.float64), "FP64", "fp64_contents"),
                                  (q.astype(np.int64) * 10**6, "INT64", "int64_contents"),
                                  (np.abs(q).astype(np.uint16), "UINT16", "uint_contents")):
            req = service_pb2.ModelInferRequest(model_name="tiny")
            t = req.inputs.add(name="input", datatype=dtype, shape=list(arr.shape[:2]))
            getattr(t.contents, field).extend(arr.ravel().tolist())
            resp = stub.ModelInfer(req, timeout=30)
            probs = np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(2, 3)
            np.testing.assert_allclose(probs, v1_probs(srv, "tiny", arr.astype(np.float32)),
                                       atol=TOL, rtol=0)
        req = service_pb2.ModelInferRequest(model_name="tiny")  # one value short
        req.inputs.add(name="input", datatype="INT32", shape=[2, 80]).contents.int_contents.extend(
            q.ravel()[:-1].tolist())
        with pytest.raises(grpc.RpcError) as ei:
            stub.ModelInfer(req, timeout=30)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "159 values, shape needs 160" in ei.value.details()
        req = service_pb2.ModelInferRequest(model_name="tiny")
        req.inputs.add(name="input", datatype="FP16", shape=[1, 4]).contents.fp32_contents.extend(
            [0.0] * 4)
        with pytest.raises(grpc.RpcError) as ei:
            stub.ModelInfer(req, timeout=30)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents" in ei.value.details()


def test_grpc_errors(grpc_client):
    x = signal(1, 50, 1)
    inp = tg.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as ei:
        grpc_client.infer("nope", [inp])
    assert "NOT_FOUND" in ei.value.status() and "no model named 'nope'" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        grpc_client.infer("tiny2", [inp])
    assert "INVALID_ARGUMENT" in ei.value.status() and "channels" in ei.value.message()
    with pytest.raises(InferenceServerException) as ei:
        grpc_client.get_model_metadata("nope")
    assert "NOT_FOUND" in ei.value.status()
    with pytest.raises(InferenceServerException) as ei:
        grpc_client.get_model_config("tiny")  # not declared by our service
    assert "UNIMPLEMENTED" in ei.value.status()


def test_grpc_stream_infer_in_order(grpc_client, srv):
    results: queue.Queue = queue.Queue()

    def callback(result, error):
        results.put((result, error))

    xs = [signal(2, 60 + 20 * i, 1, seed=20 + i) for i in range(4)]
    grpc_client.start_stream(callback=callback)
    try:
        for i, x in enumerate(xs):
            inp = tg.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            grpc_client.async_stream_infer("tiny", [inp], request_id=f"s{i}")
            if i == 1:  # a failing request in the middle: answered with an error, stream goes on
                grpc_client.async_stream_infer("nope", [inp], request_id="bad")
        got = [results.get(timeout=30) for _ in range(len(xs) + 1)]
    finally:
        grpc_client.stop_stream()
    ok = [(r, e) for r, e in got if e is None]
    errs = [e for r, e in got if e is not None]
    assert len(errs) == 1 and "no model named 'nope'" in errs[0].message()
    assert [e is None for _, e in got] == [True, True, False, True, True]  # request order
    for i, (r, _) in enumerate(ok):
        assert r.get_response().id == f"s{i}"
        np.testing.assert_allclose(r.as_numpy("probabilities"), v1_probs(srv, "tiny", xs[i]),
                                   atol=TOL, rtol=0)


def test_grpc_metrics(srv, grpc_client):
    assert grpc_client.is_server_live()
    text = srv.metrics_text()
    assert 'route="/inference.GRPCInferenceService/ServerLive",status="200"' in \
        text.replace('method="GRPC",', "")
    assert 'route="/inference.GRPCInferenceService/ModelInfer"' in text


def test_grpc_port_taken_fails_startup(start_server, checkpoint_dir, srv):
    with pytest.raises(RuntimeError):
        start_server(checkpoints=checkpoint_dir, models="tiny", grpc_port=srv.settings.grpc_port)


def test_grpc_port_setting(monkeypatch):
    import argparse

    from server.cli import register, settings_from_args
    from server.settings import Settings

    monkeypatch.delenv("S4D_GRPC_PORT", raising=False)
    assert Settings().grpc_port == 0  # off unless asked for
    monkeypatch.setenv("S4D_GRPC_PORT", "9001")
    assert Settings().grpc_port == 9001
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert settings_from_args(parser.parse_args(["serve", "--grpc-port", "8001"])).grpc_port == 8001


def test_grpc_calls_in_progress_are_capped(start_server, checkpoint_dir):
    """grpc_max_concurrent_rpcs: beyond it a call is refused RESOURCE_EXHAUSTED at once (many
    big messages at once cannot exhaust memory); a streaming call counts for its whole life;
    a finished call frees its place."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    h = start_server(checkpoints=checkpoint_dir, models="tiny", grpc_port=free_port(),
                     grpc_max_concurrent_rpcs=2)
    req = service_pb2.ModelInferRequest(model_name="tiny")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 40]).contents.fp32_contents.extend(
        signal(1, 40, 1).ravel().tolist())

    def held(q: queue.Queue):
        while (item := q.get()) is not None:
            yield item

    with grpc.insecure_channel(f"127.0.0.1:{h.settings.grpc_port}") as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ModelInfer(req, timeout=30).outputs  # under the cap
        queues, streams = [queue.Queue(), queue.Queue()], []
        for q in queues:  # two streaming calls, open until their request iterator ends
            streams.append(stub.ModelStreamInfer(held(q), timeout=60))
            q.put(req)
            assert not next(streams[-1]).error_message
        with pytest.raises(grpc.RpcError) as ei:
            stub.ModelInfer(req, timeout=30)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        queues[0].put(None)
        assert list(streams[0]) == []
        for _ in range(50):  # the finished stream's place is given back
            try:
                assert stub.ModelInfer(req, timeout=30).outputs
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                time.sleep(0.1)
        else:
            pytest.fail("a place was not given back after a stream ended")
        queues[1].put(None)
        assert list(streams[1]) == []
