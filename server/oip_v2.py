"""Open Inference Protocol v2 over HTTP (KServe v2 REST + the Triton extensions clients call).

Routes under /v2: server metadata, health, model metadata / ready / config / statistics,
repository index, and `infer` with JSON tensors and the binary tensor data extension
(`Inference-Header-Content-Length`; gzip / deflate bodies both ways). Errors on every /v2
path are OIP's `{"error": "<message>"}` with the HTTP status (our `{"error": {code, message}}`
stays on /v1): `OipRoute` renders the `ApiError`s raised by the shared code, and `install`
makes unmatched /v2 paths (404, 405) answer the same way. The OIP semantics live in
server/oip_core.py, shared with gRPC.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import jsonbody, limits
from server.auth import SCOPE_KEY
from server.errors import ApiError
from server.oip_core import (
    INLINE_DECODE_BYTES,
    NUMERIC_TYPES,
    InferRequest,
    InferResponse,
    InputTensor,
    OipService,
    RequestedOutput,
    bad_request,
)

log = logging.getLogger("s4d.oip")

HEADER_LENGTH = "Inference-Header-Content-Length"
PREFIX = "/v2"
_COMPRESS_MIN_BYTES = 1024  # smaller infer responses are sent as they are
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def is_oip_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def oip_error(request: Request, status: int, code: str, message: str,
              headers: dict | None = None) -> JSONResponse:
    """OIP error body; counted in s4d_errors_total{code} like every other error."""
    request.app.state.s4d.metrics.error(code)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class OipRoute(APIRoute):
    """Renders errors raised inside /v2 handlers as `{"error": "<message>"}`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def oip_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return oip_error(request, exc.status, exc.code, exc.message, exc.headers)
            except RequestValidationError as exc:
                msg = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}"
                                for e in exc.errors())
                return oip_error(request, 400, "bad_request", msg or "invalid request")
            except StarletteHTTPException as exc:
                code = _HTTP_CODES.get(exc.status_code, "bad_request")
                return oip_error(request, exc.status_code, code, str(exc.detail))
            except Exception as exc:  # noqa: BLE001 - answered, logged, counted
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return oip_error(request, 500, "internal", f"internal error ({type(exc).__name__})")

        return oip_handler


router = APIRouter(prefix=PREFIX, tags=["oip-v2"], route_class=OipRoute)
_ERR = {"content": {"application/json": {"example": {"error": "message"}}}}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {
                    "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                "data": [0.0, 0.1, -0.2, 0.05]}],
                    "outputs": [{"name": "probabilities"}, {"name": "label"}],
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary",
                           "description": "binary tensor data extension: JSON header of "
                           "Inference-Header-Content-Length bytes, then the tensors' bytes"}
            },
        },
    }
}


def install(app: FastAPI) -> OipService:
    """Mount the /v2 routes on `app` (after its exception handlers are registered) and make
    unmatched /v2 paths answer in OIP shape. The service is `app.state.oip`."""
    service = OipService(app.state.s4d, limits.app_limits(app))
    app.state.oip = service
    app.include_router(router)
    v1_handler = app.exception_handlers[StarletteHTTPException]

    async def http_error(request: Request, exc: StarletteHTTPException):
        if is_oip_path(request.url.path):
            code = _HTTP_CODES.get(exc.status_code, "bad_request")
            return oip_error(request, exc.status_code, code,
                             f"{exc.detail}: {request.method} {request.url.path}")
        return await v1_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, http_error)
    return service


def service_of(request: Request) -> OipService:
    return request.app.state.oip


# ---- body handling -------------------------------------------------------------------------
def content_encoding(request: Request) -> str:
    enc = (request.headers.get("content-encoding") or "identity").strip().lower()
    if enc not in ("identity", "gzip", "deflate"):
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Encoding {enc!r}: send identity, gzip or deflate")
    return enc


def decompress(body: bytes, enc: str, limit: int) -> bytes:
    """`body` decoded from Content-Encoding `enc`, at most `limit` bytes (413 beyond)."""
    if enc == "identity":
        return body
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"body is not valid {enc} data: {exc}") from exc
    if len(out) > limit or d.unconsumed_tail:
        raise ApiError(413, "too_large", f"decompressed body exceeds the limit of {limit} bytes")
    if not d.eof:
        raise bad_request(f"{enc} body is truncated")
    return out


async def read_body(request: Request, limit: int) -> bytes:
    """The request body (decompressed for Content-Encoding gzip / deflate), at most `limit`
    bytes, within the body timeout (408). Small bodies only: decompressed on the loop."""
    enc = content_encoding(request)
    body = await limits.read_body(request, limit, request.app.state.s4d.settings.body_timeout_s)
    return decompress(body, enc, limit)


def split_body(header_length: str | None, body: bytes) -> tuple[Any, memoryview]:
    """(JSON inference header, binary tensor bytes after it)."""
    hl = header_length
    if hl is None:
        header, binary = body, memoryview(b"")
    else:
        n = _header_length(hl, len(body))
        header, binary = memoryview(body)[:n], memoryview(body)[n:]
    try:
        return jsonbody.parse(header), binary
    except ApiError as exc:
        where = "inference header" if hl is not None else "body"
        raise ApiError(400, exc.code, f"{where}: {exc.message}") from None


def _header_length(value: str, body_bytes: int) -> int:
    """The Inference-Header-Content-Length value: ASCII digits, at most the body's size.
    (`str.isdigit` alone also passes "²" and other digits `int` refuses, and `int` refuses
    more than 4300 digits: both were a 500.)"""
    s = value.strip()
    digits = s.lstrip("0") or "0"
    if (not (s.isascii() and s.isdigit()) or len(digits) > len(str(body_bytes))
            or int(digits) > body_bytes):
        raise bad_request(f"{HEADER_LENGTH} {value[:40]!r} must be an integer <= the body's "
                          f"{body_bytes} bytes")
    return int(digits)


def decode_infer(body: bytes, enc: str, header_length: str | None, limit: int, model: str,
                 version: str) -> InferRequest:
    """Body bytes -> InferRequest (decompress, split, parse). Runs in the decode threads: a
    32 MB JSON body takes a while, and the event loop must keep serving streams meanwhile."""
    doc, binary = split_body(header_length, decompress(body, enc, limit))
    req = parse_infer(doc, binary, model, version)
    for t in req.inputs:  # listed numbers become an array here, in the decode pool
        t.values = numeric_values(t.values, t.datatype)
    return req


def numeric_values(values: Any, datatype: str) -> Any:
    """Listed numbers of a numeric input as a float64 array (the form `tensor_array` reads);
    anything else (BYTES, ragged lists, strings, booleans) as it is, for its own error later."""
    if not isinstance(values, list) or datatype not in NUMERIC_TYPES:
        return values
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError, OverflowError):
        return values
    return arr.astype(np.float64, copy=False) if arr.dtype.kind in "iuf" else values


def _dict(v: Any, where: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise bad_request(f"{where} must be an object")
    return v


def parse_infer(doc: Any, binary: memoryview, model: str, version: str) -> InferRequest:
    """The JSON inference request (plus its binary tensors) as a neutral `InferRequest`."""
    if not isinstance(doc, dict):
        raise bad_request('expected an object {"inputs": [{"name", "shape", "datatype", "data"}]}')
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad_request('"inputs" must be a non-empty array of tensors')
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise bad_request('"id" must be a string')
    req = InferRequest(model, version or "", rid, _dict(doc.get("parameters"), '"parameters"'))
    offset = 0
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise bad_request(f"inputs[{i}] must be an object")
        name, dtype = spec.get("name"), spec.get("datatype")
        if not isinstance(name, str) or not isinstance(dtype, str):
            raise bad_request(f"inputs[{i}] needs a string name and datatype")
        params = _dict(spec.get("parameters"), f"inputs[{i}].parameters")
        tensor = InputTensor(name, dtype, spec.get("shape"))
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise bad_request(f"inputs[{i}]: binary_data_size must be an integer >= 0")
            if "data" in spec:
                raise bad_request(f"inputs[{i}] has both data and binary_data_size")
            if offset + size > len(binary):
                raise bad_request(f"inputs[{i}]: binary_data_size {size} runs past the "
                                  f"{len(binary)} bytes after the inference header")
            tensor.raw = binary[offset:offset + size]
            offset += size
        else:
            if "data" not in spec:
                raise bad_request(f"inputs[{i}] has neither data nor binary_data_size")
            tensor.values = spec["data"]
        req.inputs.append(tensor)
    if offset != len(binary):
        raise bad_request(f"{len(binary) - offset} bytes after the inference header belong to "
                          "no input's binary_data_size")
    if doc.get("outputs") is not None:
        outs = doc["outputs"]
        if not isinstance(outs, list):
            raise bad_request('"outputs" must be an array of {"name"}')
        req.outputs = []
        for i, spec in enumerate(outs):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise bad_request(f"outputs[{i}] must be an object with a string name")
            params = _dict(spec.get("parameters"), f"outputs[{i}].parameters")
            if not isinstance(params.get("binary_data", False), bool):
                raise bad_request(f"outputs[{i}]: binary_data must be a boolean")
            req.outputs.append(RequestedOutput(spec["name"], params.get("classification", 0),
                                               params))
    if not isinstance(req.parameters.get("binary_data_output", False), bool):
        raise bad_request("parameter binary_data_output must be a boolean")
    return req


def encode_infer(resp: InferResponse, binary_default: bool) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when every output is JSON)."""
    outputs, blobs = [], []
    for o in resp.outputs:
        d: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": o.shape}
        flags = o.requested.parameters if o.requested is not None else {}
        if flags.get("binary_data", binary_default):
            raw = o.raw()
            d["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            d["data"] = o.values()
        outputs.append(d)
    doc: dict[str, Any] = {"model_name": resp.model, "model_version": resp.version}
    if resp.id is not None:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _compressed(request: Request, body: bytes, headers: dict) -> bytes:
    if len(body) < _COMPRESS_MIN_BYTES:
        return body
    accept = {p.split(";")[0].strip().lower()
              for p in (request.headers.get("accept-encoding") or "").split(",")}
    if "gzip" in accept:
        headers["Content-Encoding"] = "gzip"
        return gzip.compress(body, compresslevel=5)
    if "deflate" in accept:
        headers["Content-Encoding"] = "deflate"
        return zlib.compress(body, 5)
    return body


# ---- server ------------------------------------------------------------------------------
@router.get("", summary="Server metadata (name, version, extensions)")
async def server_metadata(request: Request) -> dict:
    return service_of(request).server_metadata()


@router.get("/health/live", summary="Liveness")
async def live(request: Request) -> dict:
    return {"live": service_of(request).live()}


@router.get("/health/ready", summary="Readiness: every model loaded", responses={503: _ERR})
async def ready(request: Request) -> dict:
    st = request.app.state.s4d
    if not service_of(request).ready():
        why = ("model loading failed" if st.load_error else
               "shutting down" if st.shutting_down else "models are still loading")
        raise ApiError(503, "not_ready", f"not ready: {why}")
    return {"ready": True}


@router.post("/repository/index", summary="Model repository index (Triton extension)")
async def repository_index(request: Request) -> list:
    body = await read_body(request, request.app.state.s4d.settings.max_body_bytes)
    # orjson, as every other body: the stdlib's json raised RecursionError (deep nesting)
    # and ValueError (integers of over 4300 digits), both a 500
    doc = jsonbody.parse(body) if body.strip() else {}
    doc = _dict(doc, "body")
    ready_only = doc.get("ready", False)
    if not isinstance(ready_only, bool):
        raise bad_request('"ready" must be a boolean')
    return [m for m in service_of(request).repository_index(ready_only)
            if _key_allows(request, m["name"])]


@router.post("/repository/models/{name}/load", responses={400: _ERR})
@router.post("/repository/models/{name}/unload", responses={400: _ERR})
async def repository_control(name: str, request: Request):
    raise bad_request("explicit model control is not supported: s4d-serve loads every model "
                      "in its checkpoints folder at startup (--models selects them)")


# ---- models ------------------------------------------------------------------------------
# /v2/models/stats before /v2/models/{name}: "stats" is not a model name
@router.get("/models/stats", summary="Statistics of every model (Triton extension)")
async def all_stats(request: Request) -> dict:
    return {"model_stats": [m for m in service_of(request).statistics()
                            if _key_allows(request, m["name"])]}


def _key_allows(request: Request, model: str) -> bool:
    """A key restricted to some models sees only those (as /v1/models does)."""
    info = request.scope.get(SCOPE_KEY)
    return info is None or info.allows(model)


@router.get("/models/{name}/stats", responses={404: _ERR})
@router.get("/models/{name}/versions/{version}/stats", responses={404: _ERR})
async def model_stats(name: str, request: Request, version: str = "") -> dict:
    return {"model_stats": service_of(request).statistics(name, version)}


@router.get("/models/{name}", summary="Model metadata", responses={404: _ERR})
@router.get("/models/{name}/versions/{version}", responses={404: _ERR})
async def model_metadata(name: str, request: Request, version: str = "") -> dict:
    return service_of(request).model_metadata(name, version)


@router.get("/models/{name}/ready", responses={404: _ERR})
@router.get("/models/{name}/versions/{version}/ready", responses={404: _ERR})
async def model_ready(name: str, request: Request, version: str = "") -> dict:
    return {"name": name, "ready": service_of(request).model_ready(name, version)}


@router.get("/models/{name}/config", summary="Model configuration (Triton extension)",
            responses={404: _ERR})
@router.get("/models/{name}/versions/{version}/config", responses={404: _ERR})
async def model_config(name: str, request: Request, version: str = "") -> dict:
    return service_of(request).model_config(name, version)


@router.post("/models/{name}/infer", summary="Inference (JSON or binary tensors)",
             openapi_extra=_INFER_BODY,
             responses={400: _ERR, 404: _ERR, 413: _ERR, 415: _ERR, 503: _ERR})
@router.post("/models/{name}/versions/{version}/infer", openapi_extra=_INFER_BODY,
             responses={400: _ERR, 404: _ERR, 413: _ERR, 415: _ERR, 503: _ERR})
async def infer(name: str, request: Request, version: str = "") -> Response:
    service = service_of(request)
    service.model(name, version)  # 404 before reading a body meant for no model
    s = service.st.settings
    enc = content_encoding(request)
    # bounded in bytes (Content-Length first, 413) and time (408) before anything is parsed
    body = await limits.read_body(request, s.max_body_bytes, s.body_timeout_s)
    header_length = request.headers.get(HEADER_LENGTH)
    decode_args = (body, enc, header_length, s.max_body_bytes, name, version)
    if enc == "identity" and len(body) <= INLINE_DECODE_BYTES:  # a stream chunk: no thread hop
        req = decode_infer(*decode_args)
    else:  # big or compressed (its size unknown until decompressed): in the decode threads
        # a plain JSON body of decode_process_min_bytes or more: parsed in a child process
        size = len(body) if enc == "identity" and header_length is None else 0
        req = await service.limits.pool.run(decode_infer, *decode_args, size=size)
    resp = await service.infer(req, request.scope.get(SCOPE_KEY))
    out, header_len = encode_infer(resp, req.parameters.get("binary_data_output", False))
    headers: dict[str, str] = {}
    if header_len is not None:
        headers[HEADER_LENGTH] = str(header_len)
    out = _compressed(request, out, headers)
    media = "application/json" if header_len is None else "application/octet-stream"
    return Response(out, media_type=media, headers=headers)
