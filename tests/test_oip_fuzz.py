"""Bounded, seeded protocol fuzz of the Open Inference Protocol (KServe v2 / Triton) endpoints
against a real server: uvicorn on 127.0.0.1 with its gRPC port, the tiny test checkpoints and
two shipped ones (ecg-s4d: patches of 5 samples; fsdd-s4d: 13 channels).

A fixed seed (printed on failure; S4D_OIP_FUZZ_SEED=N tries another) draws 400 cases, run
four at a time over both transports (about 15 s here on two CPU cores):
- infer requests over HTTP (JSON tensors, and the binary tensor extension with
  `Inference-Header-Content-Length`, bodies sometimes gzip / deflate) and gRPC (`ModelInfer`,
  inputs in `raw_input_contents` or the typed `contents`): valid ones (every datatype, [B, L]
  and [B, L, C] shapes, requested outputs, classification, ids, ignored parameters) mixed with
  malformed ones: wrong / unknown datatypes, shapes that disagree with the data, zero /
  negative / huge dims, raw_input_contents whose count or byte length is wrong, typed
  contents in the wrong field, JSON data that is not numbers, NaN / Inf / out-of-float32
  values, unknown models and versions, bad or missing inputs, outputs that do not exist or
  are asked twice, bad classification counts, parameters of the wrong type, binary sizes and
  header lengths past the body or not integers, bodies that are not JSON or not the
  Content-Encoding they claim, and gRPC messages that are not protobuf at all;
- `ModelStreamInfer` calls carrying several such requests (and undecodable messages);
- metadata / health / ready / config / statistics / repository calls, good and bad;
- sequence scripts (sequence_id / sequence_start / sequence_end): chunks over random
  transports in and out of order (continue before start, start twice, end twice), with ids
  of every kind (huge, negative, strings) and junk chunks (flags or ids of the wrong type, NaN,
  two rows, wrong channels, a batch-only model); and four long sequences, one per transport
  (HTTP JSON, HTTP binary, gRPC unary, one ModelStreamInfer call), fed through the whole
  fuzz while junk aimed at their own ids comes in between.

Invariants: every malformed request gets an OIP error (HTTP 4xx with a JSON `{"error": str}`
body; gRPC a documented status such as INVALID_ARGUMENT / NOT_FOUND with a message; a stream
an `error_message`), never a 5xx, UNKNOWN or INTERNAL, and never a hang (every call has a
deadline); every valid request answers, and its probabilities and labels equal `/v1 predict`
of the same samples; every sequence answer has the right `sequence_offset` and equals the
batch prediction of everything sent so far (1e-5); `/healthz` answers within 2 s throughout;
the server logs no error or traceback, counts no `internal` error, keeps serving, and holds
no session once every sequence has ended.

What the fuzz found is kept as plain regression tests at the end of this file.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import queue
import random
import threading
import time
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, free_port

pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2 as pb  # noqa: E402  (the public proto, not ours)

#: fixed; S4D_OIP_FUZZ_SEED explores others (a failure prints the seed it ran with)
SEED = int(os.environ.get("S4D_OIP_FUZZ_SEED", "20250311"))
N_CASES = 400
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


# ---- requests, transport-free ---------------------------------------------------------------
@dataclass
class Tensor:
    name: Any = "input"
    datatype: Any = "FP32"
    shape: Any = None
    values: np.ndarray | None = None  # flat, in the datatype's numpy dtype
    data: Any = UNSET  # JSON `data` instead of the values (junk)
    raw: bytes | None = None  # the bytes instead of the values' (junk)
    binary_size: Any = UNSET  # binary_data_size instead of the bytes' length (junk)
    field: str | None = None  # gRPC typed contents field instead of the datatype's (junk)
    both: bool = False  # gRPC: raw and typed contents; HTTP: data and binary_data_size


@dataclass
class Req:
    model: str
    version: str = ""
    rid: Any = None
    params: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    outputs: list | None = None  # [{"name", "classification"?, "binary_data"?}]
    expect: frozenset = frozenset({200})  # HTTP statuses; {200}: valid
    why: str = "valid"
    hint: str = ""  # an error message must contain it
    x: np.ndarray | None = None  # valid: the float32 [B, L, C] the server sees
    # transport detail (junk)
    body: bytes | None = None  # HTTP body instead of the rendered one
    headers: dict = field(default_factory=dict)
    header_length: Any = UNSET  # binary: Inference-Header-Content-Length value
    encoding: str = ""  # HTTP Content-Encoding to compress with ("" none)
    corrupt: str = ""  # the compressed body: truncate | swap (the other encoding) | plain
    input_params: Any = UNSET  # the input's `parameters` (JSON) instead of the rendered ones
    extra_raw: int = 0  # gRPC: raw_input_contents entries beyond the inputs'

    @property
    def valid(self) -> bool:
        return self.expect == frozenset({200})


def bad(req: Req, why: str, *statuses: int, hint: str = "") -> Req:
    req.expect, req.why, req.hint, req.x = frozenset(statuses or (400,)), why, hint, None
    return req


def int_values(nrng, dt: str, x: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.dtype(NP[dt]))
    scale = min(1000.0, float(info.max) / 8)
    v = np.round((np.abs(x) if info.min == 0 else x) * scale)
    return np.clip(v, info.min, info.max).astype(NP[dt])


def valid_req(rng: random.Random, nrng, model: str, tr: str) -> Req:
    sp = SPECS[model]
    b = rng.choice([1, 1, 2, 3])
    length = rng.choice([sp.patch, sp.patch + 1, rng.randint(sp.patch, 64),
                         rng.randint(sp.patch, 400), 2 * sp.patch + rng.randint(0, 3)])
    dt = rng.choice(["FP32"] * 5 + ["FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8",
                                     "UINT16", "UINT32", "UINT64"])
    if tr == "grpc" and dt == "FP16":
        dt = "FP32"  # FP16 has no typed contents field (raw only)
    x = nrng.standard_normal((b, length, sp.channels))
    vals = x.astype(NP[dt]) if dt.startswith("FP") else int_values(nrng, dt, x)
    shape = [b, length] if sp.channels == 1 and rng.random() < 0.5 else [b, length, sp.channels]
    req = Req(model, rng.choice(["", "", "", "1"]),
              inputs=[Tensor("input", dt, shape, vals.reshape(-1))],
              x=vals.astype(np.float64).astype(np.float32))
    k = len(sp.classes)
    out = rng.choice([None, None, ["probabilities"], ["label"], ["label", "probabilities"],
                      ["cls"], ["cls", "label"]])
    if out is not None:
        req.outputs = []
        for name in out:
            o = {"name": "probabilities" if name == "cls" else name}
            if name == "cls":
                o["classification"] = rng.choice([1, 2, k, k + 5, 2**40])
            if tr in ("json", "binary") and rng.random() < 0.5:
                o["binary_data"] = rng.random() < 0.5
            req.outputs.append(o)
    req.rid = rng.choice([None, None, "r1", "", "ü-id-\u2603", "x" * 300])
    params = rng.choice([{}, {}, {"priority": 1}, {"sequence_id": 0}, {"sequence_id": ""},
                         {"timeout": 5, "custom": "v"}, {"binary_data_output": True},
                         {"binary_data_output": False}])
    req.params = dict(params)
    if tr in ("json", "binary") and rng.random() < 0.15:
        req.encoding = rng.choice(["gzip", "deflate"])
    return req


# ---- malformed requests ----------------------------------------------------------------------
def _m_model(rng, req, tr):
    req.model = rng.choice(["nope", "TINY", "tiny ", "x" * 300, "t\u00e9", "tiny2x", "a/b"]
                           + ([""] if tr != "grpc" or rng.random() < 0.5 else []))
    return bad(req, "unknown model", 404)


def _m_version(rng, req, tr):
    req.version = rng.choice(["2", "0", "01", "-1", "latest", "1 ", "99999999999999999999"])
    return bad(req, "unknown version", 404)


def _m_datatype(rng, req, tr):
    t = req.inputs[0]
    if tr == "json" and rng.random() < 0.3:
        t.datatype = rng.choice([7, None, ["FP32"], {"t": "FP32"}, True])
    else:
        t.datatype = rng.choice(["FP8", "fp32", "BYTES", "BOOL", "", "FP32 ", "INT128", "BF16",
                                 "float32", "\x00"])
    return bad(req, f"datatype {t.datatype!r}")


def _m_raw_dtype(rng, req, tr):
    """Raw bytes of one width declared as another (the byte length cannot match)."""
    t = req.inputs[0]
    width = np.dtype(NP[t.datatype]).itemsize
    t.raw = t.values.tobytes()
    t.datatype = rng.choice([d for d in NP if np.dtype(NP[d]).itemsize != width])
    return bad(req, f"raw bytes declared {t.datatype}")


def _m_not_numbers(rng, req, tr):
    t = req.inputs[0]
    n = t.values.size
    t.data = rng.choice([
        ["0.5"] * n, [True] * n, [None] * n, [{"v": 1}] * n, "abc", {"data": 1},
        [[0.0, [1.0]]] * n, [0.1] * (n - 1) + ["x"], [0.1] * (n - 1) + [None],
    ])
    return bad(req, f"JSON data not numbers: {str(t.data)[:40]}")


def _m_wrong_field(rng, req, tr):
    t = req.inputs[0]
    right = CONTENTS[t.datatype]
    t.field = rng.choice(sorted({v for v in CONTENTS.values() if v != right}))
    return bad(req, f"{t.datatype} in {t.field}")


def _m_count(rng, req, tr):
    """Shapes whose element count disagrees with the data."""
    t = req.inputs[0]
    s = list(t.shape)
    which = rng.randrange(len(s))
    s[which] += rng.choice([1, -1]) if s[which] > 1 else 1
    if len(s) == 3 and SPECS[req.model].channels > 1 and rng.random() < 0.3:
        s = [s[0], s[1] * s[2]]  # [B, L*C] for a multichannel model: 1 channel
    t.shape = s
    return bad(req, f"shape {s} for {t.values.size} values", 400, 413)


def _m_dims(rng, req, tr):
    t = req.inputs[0]
    b, length, c = t.shape[0], t.shape[1], SPECS[req.model].channels
    small = [[], [b * length * c], [b, length, c, 1], [0, length], [b, 0], [-1, length],
             [b, -length], [b, length, 0], [b, length, -c], [0, 0, 0]]
    huge = [[2**62, length], [b, 2**62], [2**31, 2**31], [b, length, 2**40], [MAX_BATCH + 1, 1],
            [1, MAX_SEQUENCE + 1]]
    json_only = ["1,2", None, {"b": 1}, [1.5, 2], [True, length], [str(b), str(length)],
                 [b, [length]], [-(2**63), length]]
    if tr in ("json", "binary"):  # what an int64 shape cannot hold
        huge.append([2**64 - 1, length])
    pool = small + huge + (json_only if tr in ("json", "binary") else [])
    t.shape = rng.choice(pool)
    # past max_batch_sequences / max_sequence_samples: 413 (unless another check fails first)
    return bad(req, f"shape {t.shape!r}", *((400, 413) if t.shape in huge else (400,)))


def _m_short(rng, req, tr):
    """Rows shorter than the model's patch (ecg-s4d: 5, tiny2: 2)."""
    p = rng.choice(sorted(m for m in SPECS if SPECS[m].patch > 1))
    sp = SPECS[p]
    req.model, req.version, req.outputs = p, "", None
    n = rng.randint(1, sp.patch - 1)
    vals = np.zeros((1, n, sp.channels), np.float32)
    req.inputs = [Tensor("input", "FP32", [1, n, sp.channels], vals.reshape(-1))]
    return bad(req, f"{n} samples, patch {sp.patch}")


def _m_raw_count(rng, req, tr):
    t = req.inputs[0]
    kind = rng.choice(["extra", "both", "longer", "shorter", "empty"])
    if kind == "extra":
        req.extra_raw = rng.choice([1, 2])
    elif kind == "both":
        t.both = True
    else:
        raw = t.values.tobytes()
        t.raw = raw + b"\x00" * rng.randint(1, 3) if kind == "longer" else (
            raw[: -rng.randint(1, len(raw))] if kind == "shorter" else b"")
    return bad(req, f"raw_input_contents {kind}")


def _m_binary_size(rng, req, tr):
    t = req.inputs[0]
    n = t.values.nbytes
    kind = rng.choice(["smaller", "larger", "negative", "type", "both", "no_header"])
    if kind == "smaller":
        t.binary_size = n - rng.randint(1, n)
    elif kind == "larger":
        t.binary_size = n + rng.choice([1, 7, 2**40])
    elif kind == "negative":
        t.binary_size = -rng.choice([1, n])
    elif kind == "type":
        t.binary_size = rng.choice([str(n), float(n) + 0.5, True, None, [n], {"n": n}])
        if t.binary_size is None:
            t.both = True  # binary bytes and no size: they belong to no input
    elif kind == "both":
        t.both = True
    else:
        req.header_length = None  # the binary body read as JSON
    return bad(req, f"binary_data_size {kind} {t.binary_size if t.binary_size is not UNSET else ''}")


def _m_header_length(rng, req, tr):
    req.header_length = rng.choice([
        "past", "past", "-1", "x", "", "1e3", "0x10", "\u00b2", "\u00b9\u00b2", "9" * 5000,
        "0" * 30 + "9", "cut", "plus", "0", "+12", "1_0", "١٢",
    ])
    return bad(req, f"{HL} {req.header_length[:20]!r}")


def _m_non_finite(rng, req, tr):
    t = req.inputs[0]
    if tr == "json" and rng.random() < 0.4:
        req.body = b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", ' \
                   b'"data": [0.0, ' + rng.choice([b"NaN", b"Infinity", b"-Infinity"]) + b"]}]}"
        return bad(req, "JSON NaN literal")
    if t.datatype not in ("FP16", "FP32", "FP64"):
        t.datatype = "FP32"
        t.values = t.values.astype("<f4")
    v = t.values.copy()
    v[rng.randrange(v.size)] = rng.choice([np.nan, np.inf, -np.inf])
    if t.datatype == "FP64" and rng.random() < 0.5:
        v[rng.randrange(v.size)] = rng.choice([1e300, -1e39])  # finite, past float32
    t.values = v
    return bad(req, "non-finite / out of float32")


def _m_inputs(rng, req, tr):
    kind = rng.choice(["none", "two", "name", "name_case"])
    if kind == "none":
        req.inputs = []
    elif kind == "two":
        req.inputs = [req.inputs[0], Tensor(**{**req.inputs[0].__dict__, "name": "input2"})]
    else:
        req.inputs[0].name = "INPUT" if kind == "name_case" else rng.choice(["x", "", "input "])
    return bad(req, f"inputs: {kind}")


def _m_outputs(rng, req, tr):
    grpc_like = tr in ("grpc", "grpc_raw")
    kinds = ["unknown", "twice", "cls_label", "cls_bad"]
    if not grpc_like:
        kinds += ["not_list", "not_object", "binary_type"]
    kind = rng.choice(kinds)
    if kind == "unknown":
        req.outputs = [{"name": rng.choice(["logits", "PROBABILITIES", "", "label "])}]
    elif kind == "twice":
        req.outputs = [{"name": "label"}, {"name": "label"}]
    elif kind == "cls_label":
        req.outputs = [{"name": "label", "classification": 2}]
    elif kind == "cls_bad":
        req.outputs = [{"name": "probabilities", "classification":
                        rng.choice([-1, "2", 1.5, True] if not grpc_like else [-1, "2", 1.5,
                                                                             True, -(2**40)])}]
    elif kind == "not_list":
        req.outputs = rng.choice([{"name": "label"}, "label", 5])
    elif kind == "not_object":
        req.outputs = rng.choice([["label"], [{"name": 5}], [{}], [None]])
    else:
        req.outputs = [{"name": "label", "binary_data": rng.choice(["yes", 1, None, [True]])}]
    return bad(req, f"outputs: {kind} {str(req.outputs)[:60]}")


def _m_params(rng, req, tr):
    if tr in ("grpc", "grpc_raw"):  # what an InferParameter can hold
        kind, value = rng.choice([("sequence_id", 1.5), ("sequence_id", True),
                                  ("sequence_id", False), ("sequence_id", -0.0)])
    else:
        kind, value = rng.choice([
            ("parameters", []), ("parameters", "x"), ("parameters", 5),
            ("binary_data_output", "yes"), ("binary_data_output", 1),
            ("binary_data_output", None), ("sequence_id", 1.5), ("sequence_id", True),
            ("sequence_id", [1]), ("sequence_id", {"id": 1}), ("id", 5), ("id", ["a"]),
            ("id", {"a": 1}), ("input_params", "x"),
        ])
    if kind == "parameters":
        req.params = value
    elif kind == "id":
        req.rid = value
    elif kind == "input_params":
        req.input_params = value
    else:
        req.params = {**req.params, kind: value}
    return bad(req, f"{kind} = {value!r}")


def _m_body(rng, req, tr):
    kind = rng.choice(["junk", "junk", "encoding", "bad_gzip"])
    if kind == "junk":
        req.body = rng.choice([
            b"", b" ", b"not json", b"{", b"[]", b"null", b"1", b'"inputs"', b"\xff\xfe\x00",
            b"[" * 5000, b'{"inputs": ' + b"[" * 2000 + b"]" * 2000 + b"}", b"1" * 5000,
            b'{"inputs": [{"name": "input"}]}', b'{"inputs": []}', b'{"inputs": {}}',
            b'{"inputs": [1]}', b'{"inputs": [{"name": "input", "shape": [1, 1], '
            b'"datatype": "FP32", "data": [1e400]}]}', b'{"inputs": [], "inputs": 5}',
            '{"inputs": "\u00e9"}'.encode("latin-1"), b'{"id": "\\ud800", "inputs": []}',
        ])
        return bad(req, f"body {req.body[:30]!r}")
    if kind == "encoding":
        req.headers["Content-Encoding"] = rng.choice(["br", "compress", "zstd", "gzip, br"])
        return bad(req, f"Content-Encoding {req.headers['Content-Encoding']}", 415)
    req.encoding = rng.choice(["gzip", "deflate"])
    req.corrupt = rng.choice(["truncate", "swap", "plain"])
    return bad(req, f"{req.encoding} body {req.corrupt}")


#: (name, transports, weight, mutation)
MUTATIONS = [
    ("model", {"json", "binary", "grpc", "grpc_raw"}, 2, _m_model),
    ("version", {"json", "binary", "grpc", "grpc_raw"}, 1, _m_version),
    ("datatype", {"json", "binary", "grpc", "grpc_raw"}, 2, _m_datatype),
    ("raw_dtype", {"binary", "grpc_raw"}, 2, _m_raw_dtype),
    ("not_numbers", {"json"}, 3, _m_not_numbers),
    ("wrong_field", {"grpc"}, 2, _m_wrong_field),
    ("count", {"json", "binary", "grpc", "grpc_raw"}, 2, _m_count),
    ("dims", {"json", "binary", "grpc", "grpc_raw"}, 3, _m_dims),
    ("short", {"json", "binary", "grpc", "grpc_raw"}, 1, _m_short),
    ("raw_count", {"grpc_raw"}, 3, _m_raw_count),
    ("binary_size", {"binary"}, 3, _m_binary_size),
    ("header_length", {"binary"}, 3, _m_header_length),
    ("non_finite", {"json", "binary", "grpc", "grpc_raw"}, 2, _m_non_finite),
    ("inputs", {"json", "binary", "grpc", "grpc_raw"}, 1, _m_inputs),
    ("outputs", {"json", "binary", "grpc", "grpc_raw"}, 2, _m_outputs),
    ("params", {"json", "binary", "grpc", "grpc_raw"}, 2, _m_params),
    ("body", {"json"}, 3, _m_body),
]


def malformed_req(rng, nrng, model: str, tr: str) -> Req:
    req = valid_req(rng, nrng, model, tr)
    req.encoding = ""
    pool = [(w, f) for _, trs, w, f in MUTATIONS if tr in trs]
    fn = rng.choices([f for _, f in pool], [w for w, _ in pool])[0]
    return fn(rng, req, tr)


# ---- rendering -------------------------------------------------------------------------------
def _json_tensor(t: Tensor, nested: bool, binary: bool) -> dict:
    d: dict = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
    if binary and t.data is UNSET:
        raw = t.raw if t.raw is not None else t.values.tobytes()
        size = len(raw) if t.binary_size is UNSET else t.binary_size
        if size is not None:
            d["parameters"] = {"binary_data_size": size}
        if t.both:
            d["data"] = t.values.tolist()
        return d
    if t.data is not UNSET:
        d["data"] = t.data
    elif (nested and isinstance(t.shape, list) and all(type(d) is int and d > 0 for d in t.shape)
          and int(np.prod(t.shape)) == t.values.size):
        d["data"] = t.values.reshape(t.shape).tolist()
    else:
        d["data"] = t.values.tolist()
    return d


def http_request(req: Req, tr: str, rng: random.Random) -> tuple[str, bytes, dict]:
    """(path, body, headers) of an infer request over HTTP."""
    m = urllib.parse.quote(req.model, safe="")
    path = f"/v2/models/{m}" + (f"/versions/{urllib.parse.quote(req.version, safe='')}"
                                if req.version else "") + "/infer"
    headers = dict(req.headers)
    if req.body is not None:
        return path, req.body, headers
    binary = tr == "binary"
    doc: dict = {"inputs": [_json_tensor(t, rng.random() < 0.3, binary) for t in req.inputs]}
    if req.input_params is not UNSET:
        doc["inputs"][0]["parameters"] = req.input_params
    if req.rid is not None:
        doc["id"] = req.rid
    if req.params != {} or rng.random() < 0.2:
        doc["parameters"] = req.params
    if req.outputs is not None:
        if isinstance(req.outputs, list):
            doc["outputs"] = [
                {"name": o["name"], **({"parameters": {k: v for k, v in o.items() if k != "name"}}
                                        if len(o) > 1 else {})} if isinstance(o, dict) and "name" in o
                else o for o in req.outputs]
        else:
            doc["outputs"] = req.outputs
    header = json.dumps(doc).encode()
    body = header
    if binary:
        blobs = [t.raw if t.raw is not None else t.values.tobytes() for t in req.inputs
                 if t.data is UNSET]
        body = header + b"".join(blobs)
        hl = req.header_length
        if hl is UNSET:
            headers[HL] = str(len(header))
        elif hl == "past":
            headers[HL] = str(len(body) + rng.choice([1, 100]))
        elif hl == "cut":
            headers[HL] = str(len(header) - rng.randint(1, 10))
        elif hl == "plus":
            headers[HL] = str(len(header) + 1)
        elif hl is not None:  # a non-ASCII value as the bytes a client may send
            try:
                headers[HL] = hl.encode("latin-1")
            except UnicodeEncodeError:
                headers[HL] = hl.encode("utf-8")
    if req.encoding:
        body = gzip.compress(body) if req.encoding == "gzip" else zlib.compress(body)
        headers["Content-Encoding"] = req.encoding
        if req.corrupt == "truncate":
            body = body[: len(body) // 2]
        elif req.corrupt == "swap":
            headers["Content-Encoding"] = "deflate" if req.encoding == "gzip" else "gzip"
        elif req.corrupt == "plain":
            body = header
    if rng.random() < 0.2:
        headers["Accept-Encoding"] = rng.choice(["gzip", "deflate", "identity"])
    return path, body, headers


def _set_param(p, value) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        if -(2**63) <= value < 2**63:
            p.int64_param = value
        else:
            p.uint64_param = value
    elif isinstance(value, float):
        p.double_param = value
    elif isinstance(value, str):
        p.string_param = value
    # anything else: an InferParameter with no value


def grpc_request(req: Req, raw_form: bool) -> bytes:
    m = pb.ModelInferRequest(model_name=req.model, model_version=req.version, id=req.rid or "")
    for k, v in req.params.items():
        _set_param(m.parameters[k], v)
    for t in req.inputs:
        ti = m.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        if raw_form or t.both:
            m.raw_input_contents.append(t.raw if t.raw is not None else t.values.tobytes())
        if not raw_form or t.both:
            fld = t.field or CONTENTS.get(t.datatype, "fp32_contents")
            vals = t.values if fld not in ("bytes_contents", "bool_contents") else t.values[:0]
            if fld in ("int_contents", "int64_contents", "uint_contents", "uint64_contents"):
                vals = np.clip(np.nan_to_num(np.round(vals.astype(np.float64))), 0 if "uint" in fld
                               else -(2**31), 2**31 - 1).astype(np.int64)
            getattr(ti.contents, fld).extend(vals.tolist())
    for _ in range(req.extra_raw):
        m.raw_input_contents.append(b"\x00" * 8)
    for o in req.outputs or []:
        ro = m.outputs.add(name=o["name"])
        if "classification" in o:
            _set_param(ro.parameters["classification"], o["classification"])
    return m.SerializeToString()


#: messages no protobuf parser accepts (any request type), and ones only an infer request fails
UNDECODABLE = [b"\xff\xff\xff\xff", b"\x0f", b"\x00", b"\x0a\x05ab", b"\x0a\xff\xff\xff\xff\x0f",
               b"\x80"]
UNDECODABLE_INFER = [b"\x0a\x02\xc3\x28", b"\x1a\x03\xed\xa0\x80"]  # model_name / id not UTF-8


def undecodable(rng: random.Random, infer: bool, valid: bytes | None = None) -> bytes:
    choice = rng.random()
    if infer and valid is not None and choice < 0.3:
        return valid[:-1]  # the last field (raw contents or outputs) cut short
    return rng.choice(UNDECODABLE + (UNDECODABLE_INFER if infer else []))


# ---- answers ---------------------------------------------------------------------------------
@dataclass
class Answer:
    ok: bool
    status: int | None = None  # HTTP
    code: Any = None  # gRPC status (None: OK or a stream answer)
    message: str | None = None
    outputs: list = field(default_factory=list)  # [(name, datatype, shape, array)]
    rid: str | None = None
    params: dict = field(default_factory=dict)
    hang: bool = False


def _bytes_items(raw: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        n = int.from_bytes(raw[i:i + 4], "little")
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _tensor(name: str, datatype: str, shape: list, raw: bytes | None, data) -> tuple:
    if datatype == "BYTES":
        items = _bytes_items(raw) if raw is not None else [s.encode() for s in data]
        arr = np.array([s.decode() for s in items], object).reshape(shape)
    else:
        arr = (np.frombuffer(raw, NP[datatype]) if raw is not None
               else np.asarray(data, np.float64)).reshape(shape)
    return name, datatype, list(shape), arr


def http_answer(r: httpx.Response) -> Answer:
    if r.status_code != 200:
        try:
            body = r.json()
        except ValueError:
            body = None
        msg = body.get("error") if isinstance(body, dict) and set(body) == {"error"} else None
        return Answer(False, r.status_code, message=msg if isinstance(msg, str) else
                      f"<not an OIP error body: {r.text[:200]!r}>")
    content = r.content
    hl = r.headers.get(HL)
    header, blob = (content, b"") if hl is None else (content[:int(hl)], content[int(hl):])
    doc = json.loads(header)
    outs, at = [], 0
    for o in doc.get("outputs", []):
        size = (o.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            raw, at = blob[at:at + size], at + size
        outs.append(_tensor(o["name"], o["datatype"], o["shape"], raw, o.get("data")))
    return Answer(True, 200, outputs=outs, rid=doc.get("id"), params=doc.get("parameters", {}))


def proto_answer(resp: pb.ModelInferResponse) -> Answer:
    outs = [_tensor(o.name, o.datatype, list(o.shape), resp.raw_output_contents[i], None)
            for i, o in enumerate(resp.outputs)]
    params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in resp.parameters.items()}
    return Answer(True, outputs=outs, rid=resp.id, params=params)


class Clients:
    """One HTTP client and one gRPC channel, shared by every worker thread."""

    def __init__(self, srv):
        self.http = httpx.Client(base_url=srv.base_url, timeout=CALL_TIMEOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{srv.settings.grpc_port}")
        ident = bytes

        def unary(name, resp):
            return self.channel.unary_unary(SERVICE + name, request_serializer=ident,
                                            response_deserializer=resp.FromString)

        self.rpc = {
            "ServerLive": unary("ServerLive", pb.ServerLiveResponse),
            "ServerReady": unary("ServerReady", pb.ServerReadyResponse),
            "ModelReady": unary("ModelReady", pb.ModelReadyResponse),
            "ServerMetadata": unary("ServerMetadata", pb.ServerMetadataResponse),
            "ModelMetadata": unary("ModelMetadata", pb.ModelMetadataResponse),
            "ModelStatistics": unary("ModelStatistics", pb.ModelStatisticsResponse),
            "RepositoryIndex": unary("RepositoryIndex", pb.RepositoryIndexResponse),
            "ModelInfer": unary("ModelInfer", pb.ModelInferResponse),
        }
        self.stream = self.channel.stream_stream(
            SERVICE + "ModelStreamInfer", request_serializer=ident,
            response_deserializer=pb.ModelStreamInferResponse.FromString)

    def close(self):
        self.http.close()
        self.channel.close()

    def unary(self, name: str, payload: bytes):
        """(response or None, Answer of the error or None)."""
        try:
            return self.rpc[name](payload, timeout=CALL_TIMEOUT), None
        except grpc.RpcError as exc:
            hang = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            return None, Answer(False, code=exc.code(), message=exc.details(), hang=hang)

    def infer(self, req: Req, tr: str, rng: random.Random) -> Answer:
        if tr in ("json", "binary"):
            path, body, headers = http_request(req, tr, rng)
            try:
                return http_answer(self.http.post(path, content=body, headers=headers))
            except httpx.TimeoutException:
                return Answer(False, hang=True, message="timeout")
        payload = grpc_request(req, tr == "grpc_raw")
        if tr == "stream1":  # one request on its own ModelStreamInfer call
            answers = self.stream_call([payload])
            return answers[0] if answers else Answer(False, message="<no answer>")
        resp, err = self.unary("ModelInfer", payload)
        return err if err is not None else proto_answer(resp)

    def stream_call(self, payloads: list[bytes], pause: float = 0.0) -> list[Answer]:
        def gen():
            for p in payloads:
                yield p
                if pause:
                    time.sleep(pause)

        out = []
        try:
            for r in self.stream(gen(), timeout=CALL_TIMEOUT + pause * len(payloads)):
                out.append(Answer(False, message=r.error_message) if r.error_message
                           else proto_answer(r.infer_response))
                out[-1].rid = r.infer_response.id
        except grpc.RpcError as exc:
            out.append(Answer(False, code=exc.code(), message=f"stream ended: {exc.details()}",
                              hang=exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED))
        return out


# ---- checks ----------------------------------------------------------------------------------
@dataclass
class Seen:
    """What the run saw: problems, valid outputs to compare with /v1 predict, sequences."""

    problems: list = field(default_factory=list)
    valid: list = field(default_factory=list)  # (model, x [B, L, C], probs | None, labels, cls)
    sequences: list = field(default_factory=list)  # SeqLog
    counts: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1


def check_error(ans: Answer, expect: frozenset, hint: str = "", stream: bool = False) -> str | None:
    if ans.hang:
        return f"hang: no answer within {CALL_TIMEOUT} s ({ans.message})"
    if ans.ok:
        return f"accepted; expected an error {sorted(expect)}"
    msg = ans.message
    if not isinstance(msg, str) or not msg.strip():
        return f"error without a readable message: {ans}"
    if "Traceback" in msg or "internal error" in msg:
        return f"internal error: {msg[:300]}"
    if hint and hint not in msg:
        return f"message {msg[:200]!r} does not say {hint!r}"
    if stream and ans.code is None:
        return None  # an error_message: no status to check
    if ans.status is not None:
        if ans.status not in expect:
            return f"HTTP {ans.status} ({msg[:200]}), expected {sorted(expect)}"
    elif ans.code not in {GRPC_OF[s] for s in expect if s in GRPC_OF}:
        return f"gRPC {ans.code} ({msg[:200]}), expected {sorted(expect)}"
    return None


def check_ok(req: Req, ans: Answer, seen: Seen) -> str | None:
    """A valid batch request's answer: the outputs asked for, shapes, labels consistent; the
    probabilities are compared with /v1 predict at the end."""
    if ans.hang or not ans.ok:
        return f"valid request refused: {ans.status or ans.code} {ans.message!r}"
    sp = SPECS[req.model]
    b, k = req.x.shape[0], len(sp.classes)
    want = [o["name"] for o in req.outputs] if req.outputs else ["probabilities", "label"]
    got = {name: (dt, shape, arr) for name, dt, shape, arr in ans.outputs}
    if [o[0] for o in ans.outputs] != want:
        return f"outputs {[o[0] for o in ans.outputs]}, asked for {want}"
    if req.rid not in (None, "") and ans.rid != req.rid:
        return f"id {ans.rid!r}, sent {req.rid!r}"
    probs = labels = cls = None
    if "label" in got:
        dt, shape, labels = got["label"]
        if dt != "BYTES" or shape != [b] or any(lab not in sp.classes for lab in labels):
            return f"label output {dt} {shape} {list(labels)[:3]}"
        labels = list(labels)
    if "probabilities" in got:
        dt, shape, arr = got["probabilities"]
        n = next((o.get("classification", 0) for o in req.outputs or [] if
                  o["name"] == "probabilities"), 0)
        if n:
            kk = min(n, k)
            if dt != "BYTES" or shape != [b, kk]:
                return f"classification output {dt} {shape}, expected BYTES {[b, kk]}"
            cls = [[(float(c.split(":")[0]), int(c.split(":")[1]), c.split(":", 2)[2])
                    for c in row] for row in arr]
            if any(sp.classes[i] != name for row in cls for _, i, name in row):
                return f"classification labels disagree with the class index: {cls[0]}"
        else:
            if dt != "FP32" or shape != [b, k] or not np.isfinite(arr).all():
                return f"probabilities {dt} {shape}"
            probs = np.asarray(arr, np.float64)
            if np.abs(probs.sum(1) - 1).max() > 1e-4:
                return f"probabilities do not sum to 1: {probs.sum(1)}"
            if labels is not None and [sp.classes[i] for i in probs.argmax(1)] != labels:
                return f"labels {labels} disagree with the probabilities' argmax"
    with seen.lock:
        seen.valid.append((req.model, req.x, probs, labels, cls))
    return None


# ---- sequences -------------------------------------------------------------------------------
@dataclass
class SeqLog:
    model: str
    sid: Any
    samples: list = field(default_factory=list)  # accepted chunks [n, C]
    answers: list = field(default_factory=list)  # (total, probs [K] | None, label)


class Sequence:
    """One sequence id and the server's state of it as the protocol predicts it."""

    def __init__(self, model: str, sid, nrng):
        self.model, self.sid, self.nrng = model, sid, nrng
        self.open = False
        self.total = 0
        self.log: SeqLog | None = None
        self.logs: list[SeqLog] = []

    def chunk(self, n: int) -> np.ndarray:
        return self.nrng.standard_normal((n, SPECS[self.model].channels)).astype(np.float32)

    def request(self, x: np.ndarray, start: bool, end: bool) -> Req:
        c = SPECS[self.model].channels
        params: dict = {"sequence_id": self.sid}
        if start or self.nrng.random() < 0.5:
            params["sequence_start"] = start
        if end or self.nrng.random() < 0.5:
            params["sequence_end"] = end
        shape = [1, len(x)] if c == 1 and self.nrng.random() < 0.5 else [1, len(x), c]
        return Req(self.model, params=params, outputs=None,
                   inputs=[Tensor("input", "FP32", shape, x.reshape(-1))])

    def expect(self, req: Req, start: bool, end: bool, x: np.ndarray) -> None:
        if self.open and start:
            bad(req, "sequence started twice", 409, hint="already started")
        elif not self.open and not start:
            bad(req, "sequence not open", 400, hint="is not open")
        else:
            req.why, req.x = f"sequence chunk start={start} end={end}", x[None]

    def answered(self, req: Req, ans: Answer, start: bool, end: bool) -> str | None:
        """Apply an accepted chunk: offset and shape checks, the answer logged."""
        x = req.x[0]
        if start:
            self.log = SeqLog(self.model, self.sid)
            self.logs.append(self.log)
            self.total = 0
        self.total += len(x)
        self.open = not end
        self.log.samples.append(x)
        p = SPECS[self.model].patch
        covered = self.total - self.total % p  # the prediction covers whole patches
        # the end drops a partial patch, as the batch forward does, and counts it (as the
        # WebSocket `final`'s offset does): every sample sent is consumed
        want = self.total if end else covered
        got = ans.params.get("sequence_offset")
        if got != want:
            return f"sequence_offset {got}, expected {want} after {self.total} samples"
        outs = {name: arr for name, _, _, arr in ans.outputs}
        probs = np.asarray(outs["probabilities"], np.float64).reshape(-1)
        label = list(outs["label"])[0]
        if (covered == 0) != bool(np.isnan(probs).all()) or (covered == 0) != (label == ""):
            return f"after {covered} samples: probabilities {probs}, label {label!r}"
        self.log.answers.append((self.total, None if covered == 0 else probs, label))
        return None


def seq_junk(rng: random.Random, seq: Sequence) -> Req:
    """A chunk the server refuses whatever the sequence's state (checked before it is fed)."""
    sp = SPECS[seq.model]
    x = seq.chunk(rng.randint(1, 50))
    req = seq.request(x, rng.random() < 0.3, rng.random() < 0.3)
    t = req.inputs[0]
    kind = rng.choice(["nan", "two_rows", "channels", "flag", "flag", "sid", "batch_only",
                       "too_long", "empty"])
    if kind == "nan":
        v = t.values.copy()
        v[rng.randrange(v.size)] = np.nan
        t.values = v
        return bad(req, "sequence chunk with NaN")
    if kind == "two_rows":
        x2 = np.concatenate([x, x])
        t.shape, t.values = [2, len(x), sp.channels], x2.reshape(-1)
        return bad(req, "sequence chunk of two rows", hint="one row")
    if kind == "channels":
        t.shape = [1, len(x) * sp.channels // (sp.channels + 1) or 1, sp.channels + 1]
        t.values = np.zeros(int(np.prod(t.shape)), np.float32)
        return bad(req, "sequence chunk, wrong channels")
    if kind == "flag":
        key = rng.choice(["sequence_start", "sequence_end"])
        req.params[key] = rng.choice(["true", 1, 0, 1.0, None, "false"])
        return bad(req, f"{key} = {req.params[key]!r}", hint="must be a boolean")
    if kind == "sid":
        req.params["sequence_id"] = rng.choice([1.5, True, -2.5])
        return bad(req, f"sequence_id = {req.params['sequence_id']!r}")
    if kind == "batch_only":
        req.model = "tinybi"
        t.shape, t.values = [1, len(x)], x[:, 0].copy()
        return bad(req, "sequence on a batch-only model", hint="bidirectional")
    if kind == "too_long":
        t.shape = [1, MAX_SEQUENCE + 1]
        return bad(req, "sequence chunk past max_sequence_samples", 413, 400)
    t.shape, t.values = [1, 0], np.zeros(0, np.float32)
    return bad(req, "sequence chunk of zero samples")


SEQ_TRANSPORTS = ("json", "binary", "grpc", "grpc_raw", "stream1")


def _json_safe(req: Req, tr: str) -> str:
    """gRPC cannot carry a None or a list parameter: those junk chunks go over HTTP."""
    bad_types = any(v is None or isinstance(v, (list, dict)) for v in req.params.values())
    return "json" if bad_types and tr not in ("json", "binary") else tr


def sequence_step(clients: Clients, rng: random.Random, seq: Sequence, tr: str, seen: Seen,
                  start: bool, end: bool, n: int, where: str) -> None:
    x = seq.chunk(n)
    req = seq.request(x, start, end)
    seq.expect(req, start, end, x)
    ans = clients.infer(req, tr, rng)
    seen.count(f"seq {tr} {'ok' if req.valid else 'err'}")
    if req.valid:
        problem = (f"valid sequence chunk refused: {ans.status or ans.code} {ans.message!r}"
                   if not ans.ok or ans.hang else seq.answered(req, ans, start, end))
    else:
        problem = check_error(ans, req.expect, req.hint, stream=tr in ("stream1", "stream"))
    if problem:
        with seen.lock:
            seen.problems.append(f"{where} seq {seq.sid!r:.40} [{tr}] {req.why}: {problem}")


def run_seq_script(clients: Clients, rng: random.Random, nrng, index: int, seen: Seen) -> None:
    model = rng.choice(STREAMABLE)
    sid = rng.choice([index + 1, 2**64 - 1 - index, -(index + 1), 10**15 + index,
                      f"seq-{index}", f"s\u00e9q-{index}-" + "x" * rng.choice([1, 500]),
                      str(index + 1)])  # "7" is not 7: both may be open at once
    seq = Sequence(model, sid, nrng)
    where = f"case {index}"
    sizes = [1, 2, 3, 7, 50, 200, 700, SPECS[model].patch, SPECS[model].patch + 1]
    if SPECS[model].channels > 1:  # fsdd-s4d's batch forward (the reference) is slow on a CPU
        sizes = [1, 2, 3, 7, 50, 120]
    for _ in range(rng.randint(3, 9)):
        tr = rng.choice(SEQ_TRANSPORTS)
        r = rng.random()
        if r < 0.25:
            junk = seq_junk(rng, seq)
            tr = _json_safe(junk, tr)
            ans = clients.infer(junk, tr, rng)
            problem = check_error(ans, junk.expect, junk.hint, stream=tr == "stream1")
            if problem:
                with seen.lock:
                    seen.problems.append(f"{where} seq {sid!r:.40} [{tr}] {junk.why}: {problem}")
            continue
        flags = rng.choices([(False, False), (True, False), (False, True), (True, True)],
                            [5, 2, 1.5, 0.5])[0]
        if r < 0.45 and not seq.open:
            flags = (True, flags[1])
        sequence_step(clients, rng, seq, tr, seen, *flags, rng.choice(sizes), where)
    if seq.open:
        sequence_step(clients, rng, seq, rng.choice(SEQ_TRANSPORTS), seen, False, True,
                      rng.choice(sizes), where)
    with seen.lock:
        seen.sequences.extend(seq.logs)


class StreamConn:
    """A ModelStreamInfer call kept open: requests one at a time, each answer awaited with a
    deadline (the call itself ends at `lifetime`)."""

    def __init__(self, clients: Clients, lifetime: float):
        self.requests: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()
        self.call = clients.stream(iter(self.requests.get, None), timeout=lifetime)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for r in self.call:
                a = Answer(False, message=r.error_message) if r.error_message else \
                    proto_answer(r.infer_response)
                a.rid = r.infer_response.id
                self.answers.put(a)
        except grpc.RpcError as exc:
            self.answers.put(Answer(False, code=exc.code(), message=f"stream ended: "
                                    f"{exc.details()}"))

    def infer(self, payload: bytes) -> Answer:
        self.requests.put(payload)
        try:
            return self.answers.get(timeout=CALL_TIMEOUT)
        except queue.Empty:
            return Answer(False, hang=True, message="no stream answer")

    def close(self) -> None:
        self.requests.put(None)
        self.reader.join(CALL_TIMEOUT)


def run_long_sequence(clients: Clients, k: int, tr: str, model: str, done: threading.Event,
                      seen: Seen) -> None:
    """A sequence fed for the whole fuzz on one transport, with junk aimed at its id between
    its chunks: restarts (409), chunks that fail validation (400); it must equal batch."""
    rng, nrng = random.Random(f"{SEED}-long-{k}"), np.random.default_rng([SEED, 10_000 + k])
    seq = Sequence(model, f"long-{k}" if k % 2 else 900_000 + k, nrng)
    conn = StreamConn(clients, 300) if tr == "stream" else None

    class Via:  # the Clients interface over the kept stream
        def infer(self, req, _tr, _rng):
            if conn is None:
                return clients.infer(req, tr, rng)
            return conn.infer(grpc_request(req, rng.random() < 0.5))

    via, where, chunks = Via(), f"long sequence {k} ({tr}, {model})", 0
    try:
        sequence_step(via, rng, seq, tr, seen, True, False, rng.randint(1, 300), where)
        while (not done.is_set() or chunks < 10) and chunks < 150:
            r = rng.random()
            if r < 0.25:
                junk = seq_junk(rng, seq) if rng.random() < 0.6 else seq.request(
                    seq.chunk(3), True, False)
                if junk.valid:
                    bad(junk, "sequence restarted while open", 409, hint="already started")
                if conn is not None and _json_safe(junk, "grpc") == "json":
                    ans = clients.infer(junk, "json", rng)
                else:
                    ans = via.infer(junk, tr, rng)
                problem = check_error(ans, junk.expect, junk.hint, stream=conn is not None)
                if problem:
                    with seen.lock:
                        seen.problems.append(f"{where}: {junk.why}: {problem}")
            else:
                sequence_step(via, rng, seq, tr, seen, False, False,
                              rng.choice([1, 2, 5, 33, 160, 400, 1000]), where)
                chunks += 1
            time.sleep(rng.choice([0.0, 0.01, 0.03]))
        sequence_step(via, rng, seq, tr, seen, False, True, rng.randint(1, 50), where)
    finally:
        if conn is not None:
            conn.close()
    with seen.lock:
        seen.sequences.extend(seq.logs)


# ---- cases -----------------------------------------------------------------------------------
def run_infer_case(clients, rng, nrng, index, seen) -> None:
    tr = rng.choice(["json", "json", "binary", "binary", "grpc", "grpc_raw", "grpc_raw"])
    model = rng.choice(list(SPECS))
    valid = rng.random() < 0.4
    req = valid_req(rng, nrng, model, tr) if valid else malformed_req(rng, nrng, model, tr)
    if tr.startswith("grpc") and req.encoding:
        req.encoding = ""
    ans = clients.infer(req, tr, rng)
    seen.count(f"infer {tr} {'ok' if req.valid else 'err'}")
    problem = check_ok(req, ans, seen) if req.valid else check_error(ans, req.expect, req.hint)
    if problem:
        with seen.lock:
            seen.problems.append(f"case {index} [{tr}] {req.model!r} {req.why}: {problem}")


def run_stream_case(clients, rng, nrng, index, seen) -> None:
    """One ModelStreamInfer call carrying valid, malformed and undecodable requests: one answer
    each, in order; a failed request never ends the stream."""
    items = []
    for j in range(rng.randint(2, 7)):
        model = rng.choice(list(SPECS))
        tr = rng.choice(["grpc", "grpc_raw"])
        r = rng.random()
        if r < 0.45:
            req = valid_req(rng, nrng, model, tr)
        elif r < 0.85:
            req = malformed_req(rng, nrng, model, tr)
        else:
            req = None
        if req is not None:
            req.rid = f"s{index}-{j}"
            payload = grpc_request(req, tr == "grpc_raw")
        else:
            payload = undecodable(rng, True, grpc_request(valid_req(rng, nrng, model, "grpc"),
                                                          True))
        items.append((req, payload))
    answers = clients.stream_call([p for _, p in items], pause=rng.choice([0.0, 0.0, 0.01]))
    seen.count("stream calls")
    problems = []
    if len(answers) != len(items):
        problems.append(f"{len(answers)} answers to {len(items)} requests: "
                        f"{[a.message for a in answers][-2:]}")
    for j, ((req, _), ans) in enumerate(zip(items, answers)):
        if req is None:
            p = check_error(ans, frozenset({400}), "not a valid", stream=True)
            why = "undecodable"
        elif req.valid:
            p = check_ok(req, ans, seen)
            why = "valid"
        else:
            p = check_error(ans, req.expect, req.hint, stream=True)
            why = req.why
            if p is None and ans.rid != req.rid:
                p = f"error answer's id {ans.rid!r}, sent {req.rid!r}"
        if p:
            problems.append(f"request {j} ({why}): {p}")
    if problems:
        with seen.lock:
            seen.problems.append(f"case {index} [stream] {problems}")


def run_meta_case(clients, rng, nrng, index, seen) -> None:
    if rng.random() < 0.5:
        return _grpc_meta(clients, rng, index, seen)
    return _http_meta(clients, rng, index, seen)


def _grpc_meta(clients, rng, index, seen) -> None:
    rpc = rng.choice(["ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                      "ModelMetadata", "ModelStatistics", "RepositoryIndex"])
    req_cls = getattr(pb, rpc + "Request")
    model = rng.choice(list(SPECS))
    expect, msg = frozenset({200}), req_cls()
    r = rng.random()
    if r < 0.2:
        payload = undecodable(rng, False)
        expect = frozenset({400})
    else:
        if rpc in ("ModelReady", "ModelMetadata", "ModelStatistics"):
            name, version = model, rng.choice(["", "", "1"])
            if r < 0.6:
                if rng.random() < 0.5:
                    name = rng.choice(["nope", "tiny ", "x" * 200, "TINY"]
                                      + ([""] if rpc != "ModelStatistics" else []))
                else:
                    version = rng.choice(["2", "0", "latest", "1 "])
                expect = frozenset({404})
            msg = req_cls(name=name, version=version)
        elif rpc == "RepositoryIndex":
            msg = req_cls(ready=rng.random() < 0.5)
        payload = msg.SerializeToString()
    resp, err = clients.unary(rpc, payload)
    seen.count(f"meta grpc {'ok' if expect == {200} else 'err'}")
    if expect == {200}:
        problem = None if err is None else f"refused: {err.code} {err.message}"
        if problem is None and rpc == "ModelMetadata":
            c = SPECS[model].channels
            if resp.name != model or list(resp.inputs[0].shape) != [-1, -1, c]:
                problem = f"metadata {resp}"
        elif problem is None and rpc in ("ServerLive", "ServerReady", "ModelReady"):
            if not (resp.live if rpc == "ServerLive" else resp.ready):
                problem = f"{rpc} answered {resp}"
    else:
        problem = check_error(err or Answer(True), expect)
    if problem:
        with seen.lock:
            seen.problems.append(f"case {index} [grpc {rpc}] {payload[:40]!r}: {problem}")


def _http_meta(clients, rng, index, seen) -> None:
    model = rng.choice(list(SPECS))
    m = urllib.parse.quote(model, safe="")
    good = [("GET", "/v2", None), ("GET", "/v2/health/live", None),
            ("GET", "/v2/health/ready", None), ("GET", f"/v2/models/{m}", None),
            ("GET", f"/v2/models/{m}/versions/1", None), ("GET", f"/v2/models/{m}/ready", None),
            ("GET", f"/v2/models/{m}/config", None), ("GET", f"/v2/models/{m}/stats", None),
            ("GET", "/v2/models/stats", None), ("POST", "/v2/repository/index", b""),
            ("POST", "/v2/repository/index", b'{"ready": true}'),
            ("POST", "/v2/repository/index", b"null"), ("POST", "/v2/repository/index", b"{}")]
    junk = [
        (404, "GET", "/v2/models/nope"), (404, "GET", f"/v2/models/{m}/versions/2"),
        (404, "GET", f"/v2/models/{m}/versions/latest/ready"), (404, "GET", "/v2/models/nope/ready"),
        (404, "GET", "/v2/models/nope/config"), (404, "GET", f"/v2/models/{m}/versions/0/config"),
        (404, "GET", "/v2/models/nope/stats"), (404, "GET", "/v2/nope"),
        (404, "GET", f"/v2/models/{m}/nope"), (404, "POST", "/v2/models/%20/infer"),
        (405, "DELETE", f"/v2/models/{m}"), (405, "GET", f"/v2/models/{m}/infer"),
        (405, "PUT", "/v2/repository/index"), (405, "POST", f"/v2/models/{m}/ready"),
        (400, "POST", f"/v2/repository/models/{m}/load"),
        (400, "POST", f"/v2/repository/models/{m}/unload"),
    ]
    index_junk = [b'{"ready": 1}', b"[]", b'"x"', b"[" * 100_000, b"1" * 5000, b"\xff",
                  b'{"ready": "yes"}', b"{", b'{"ready": NaN}', b"5"]
    r = rng.random()
    if r < 0.4:
        method, path, body = rng.choice(good)
        expect = frozenset({200})
    elif r < 0.75:
        status, method, path = rng.choice(junk)
        body, expect = None, frozenset({status})
    else:
        method, path, body = "POST", "/v2/repository/index", rng.choice(index_junk)
        expect = frozenset({400})
    try:
        resp = clients.http.request(method, path, content=body)
        ans = http_answer(resp) if resp.status_code != 200 else Answer(True, 200)
    except httpx.TimeoutException:
        ans = Answer(False, hang=True, message="timeout")
    seen.count(f"meta http {'ok' if expect == {200} else 'err'}")
    if expect == {200}:
        problem = None if ans.ok else f"refused: {ans.status} {ans.message}"
        if problem is None and path == f"/v2/models/{m}":
            doc = resp.json()
            if doc["name"] != model or doc["inputs"][0]["shape"][-1] != SPECS[model].channels:
                problem = f"metadata {doc}"
    else:
        problem = check_error(ans, expect)
    if problem:
        with seen.lock:
            seen.problems.append(f"case {index} [http {method} {path}] {body!r:.40}: {problem}")


CASES = [(run_infer_case, 70), (run_stream_case, 8), (run_meta_case, 12), (run_seq_script, 10)]


def run_case(clients: Clients, index: int, seen: Seen) -> None:
    rng = random.Random(f"{SEED}-{index}")
    nrng = np.random.default_rng([SEED, index])
    fn = rng.choices([f for f, _ in CASES], [w for _, w in CASES])[0]
    try:
        fn(clients, rng, nrng, index, seen)
    except Exception as exc:  # a client-side surprise is a finding too: keep its case
        import traceback

        where = traceback.format_exc().strip().splitlines()[-4:]
        with seen.lock:
            seen.problems.append(f"case {index} ({fn.__name__}) raised {exc!r}: {where}")


# ---- the run ---------------------------------------------------------------------------------
class LogTrap(logging.Handler):
    """Every record of WARNING or above, from the root logger and uvicorn's own (which does not
    propagate)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        for name in ("", "uvicorn"):
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc):
        for name in ("", "uvicorn"):
            logging.getLogger(name).removeHandler(self)


def health_poller(base: str, stop: threading.Event, out: list) -> None:
    with httpx.Client(base_url=base, timeout=10) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                out.append((c.get("/healthz").status_code, time.perf_counter() - t0))
            except httpx.HTTPError as exc:
                out.append((repr(exc), time.perf_counter() - t0))
            stop.wait(0.1)


def compare_with_v1(base: str, seen: Seen) -> int:
    """Every valid batch answer against /v1 predict of the same samples."""
    by_model: dict[str, list] = {}
    for model, x, probs, labels, cls in seen.valid:
        for i in range(len(x)):
            by_model.setdefault(model, []).append((x[i], None if probs is None else probs[i],
                                                   None if labels is None else labels[i],
                                                   None if cls is None else cls[i]))
    checked = 0
    for model, rows in by_model.items():
        classes = SPECS[model].classes
        for i in range(0, len(rows), 16):
            part = rows[i:i + 16]
            ref = v1_predict(base, model, [r[0] for r in part])
            for (x, probs, label, cls), (p_ref, label_ref) in zip(part, ref, strict=True):
                if probs is not None:
                    diff = np.abs(probs - p_ref).max()
                    assert diff <= TOL, f"{model} L={len(x)}: |OIP - /v1| = {diff:.2e}"
                if label is not None:
                    assert label == label_ref, (model, label, label_ref)
                if cls is not None:  # the k best, best first (ties in either order)
                    kth = np.sort(p_ref)[::-1][len(cls) - 1]
                    scores = [p for p, _, _ in cls]
                    assert scores == sorted(scores, reverse=True), cls
                    assert len({j for _, j, _ in cls}) == len(cls), cls
                    assert all(abs(p - p_ref[j]) <= 1e-5 and p_ref[j] >= kth - 1e-5
                               and classes[j] == n for p, j, n in cls), (cls, p_ref)
                checked += 1
    return checked


def v1_predict(base: str, model: str, seqs: list[np.ndarray]) -> list[tuple[np.ndarray, str]]:
    inputs = [s[:, 0].tolist() if s.shape[1] == 1 else s.tolist() for s in seqs]
    r = httpx.post(f"{base}/v1/models/{model}/predict", json={"inputs": inputs}, timeout=60)
    assert r.status_code == 200, r.text
    return [(np.array(list(p["probabilities"].values())), p["label"])
            for p in r.json()["predictions"]]


def compare_sequences(base: str, seen: Seen) -> int:
    """Every sequence answer equals the batch prediction of everything sent before it."""
    checked = 0
    for log in seen.sequences:
        x = np.concatenate(log.samples) if log.samples else None
        todo = [(total, probs, label) for total, probs, label in log.answers if probs is not None]
        if len(todo) > 8:  # a long sequence: its first answers, the last, and some between
            pick = random.Random(f"{SEED}-{log.sid}").sample(range(2, len(todo) - 1), 5)
            todo = [todo[i] for i in sorted({0, 1, len(todo) - 1, *pick})]
        for i in range(0, len(todo), 16):
            part = todo[i:i + 16]
            ref = v1_predict(base, log.model, [x[:t] for t, _, _ in part])
            for (total, probs, label), (p_ref, label_ref) in zip(part, ref, strict=True):
                diff = np.abs(probs - p_ref).max()
                assert diff <= TOL, (f"sequence {log.sid!r:.40} of {log.model} after {total} "
                                     f"samples: |sequence - batch| = {diff:.2e}")
                assert label == label_ref, (log.sid, total, label, label_ref)
                checked += 1
    return checked



def _metric(text: str, name: str) -> list[float]:
    return [float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name)]


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


def test_oip_fuzz(srv, capfd):
    t0 = time.monotonic()
    seen, done, stop, health = Seen(), threading.Event(), threading.Event(), []
    clients = Clients(srv)
    poller = threading.Thread(target=health_poller, args=(srv.base_url, stop, health))
    poller.start()
    long_plan = [("json", "tiny"), ("binary", "ecg-s4d"), ("grpc", "tiny2"),
                 ("stream", "tinyema")]
    with LogTrap() as trap, ThreadPoolExecutor(WORKERS + len(long_plan)) as pool:
        longs = [pool.submit(run_long_sequence, clients, k, tr, m, done, seen)
                 for k, (tr, m) in enumerate(long_plan)]
        with ThreadPoolExecutor(WORKERS) as workers:
            list(workers.map(lambda i: run_case(clients, i, seen), range(N_CASES)))
        fuzz_s = time.monotonic() - t0
        done.set()
        for f in longs:
            f.result(timeout=120)
        stop.set()
        poller.join(30)
    clients.close()

    report = (f"OIP fuzz seed {SEED} ({N_CASES} cases; rerun: S4D_OIP_FUZZ_SEED={SEED} "
              f"pytest tests/test_oip_fuzz.py): "
              f"{len(seen.problems)} problems:\n" + "\n".join(seen.problems[:40]))
    assert not seen.problems, report
    # the server: alive, serving, nothing logged, nothing counted as internal, no session left
    assert srv.thread.is_alive() and not srv.errors, report
    logged = [f"{r.name} {r.levelname}: {r.getMessage()[:300]}" for r in trap.records
              if r.levelno >= logging.ERROR or r.exc_info]
    assert not logged, f"seed {SEED}: the server logged errors:\n" + "\n".join(logged[:20])
    err = capfd.readouterr().err
    assert "Traceback" not in err, f"seed {SEED}: a traceback on stderr:\n{err[-3000:]}"
    assert health and all(s == 200 for s, _ in health), [h for h in health if h[0] != 200][:5]
    assert max(t for _, t in health) < 2.0, sorted(t for _, t in health)[-5:]
    # every valid answer equals /v1 predict; every sequence answer equals batch
    checked = compare_with_v1(srv.base_url, seen)
    seq_checked = compare_sequences(srv.base_url, seen)
    assert checked >= 100 and seq_checked >= 60, (checked, seq_checked)
    text = srv.metrics_text()
    assert not [v for v in _metric(text, 's4d_errors_total{code="internal"}') if v > 0]
    deadline = time.monotonic() + 10
    while sum(_metric(text, "s4d_sessions_active{")) and time.monotonic() < deadline:
        time.sleep(0.2)
        text = srv.metrics_text()
    assert sum(_metric(text, "s4d_sessions_active{")) == 0, "a sequence's session was left open"
    assert httpx.get(f"{srv.base_url}/readyz", timeout=5).status_code == 200
    with capfd.disabled():  # the summary, with -s
        print(f"OIP fuzz seed {SEED}: {N_CASES} cases in {fuzz_s:.1f} s, {checked} rows vs /v1, "
              f"{seq_checked} sequence answers vs batch, {len(seen.sequences)} sequences, "
              f"total {time.monotonic() - t0:.1f} s; {dict(sorted(seen.counts.items()))}")


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
    for data in ([1, 2, 3], [1.0, 1, 2.0], [[-5, 1, 2]], [[7], [1], [2]]):  # flat or nested
        spec = {"name": "input", "shape": [1, 3], "datatype": "INT32", "data": data}
        assert _infer_json(srv, [spec]).status_code == 200
    for data, dt in (([0.5, 1, 2], "INT32"), ([1000, 0, 1], "INT8"), ([-1, 0, 1], "UINT8")):
        spec = {"name": "input", "shape": [1, 3], "datatype": dt, "data": data}
        assert "integers in" in _oip_error(_infer_json(srv, [spec]), 400)  # not wrapped or cut


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
