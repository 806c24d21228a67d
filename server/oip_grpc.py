"""KServe v2 `inference.GRPCInferenceService` on grpc.aio, in the HTTP app's process and loop
(with the HTTP listener's TLS certificate when it has one).

Started and stopped by the app lifespan (`start(app)` / `stop(server, grace)`) when
`grpc_port` is set. Every RPC goes through the same `OipService` as /v2 over HTTP (same
validation, limits, batch path and statistics) and is observed in the same metrics:
`s4d_request_latency_seconds{route="/inference.GRPCInferenceService/<Rpc>", method="GRPC",
status=<the HTTP status the error maps from, 200 on success>}` and `s4d_errors_total{code}`.
"""

from __future__ import annotations

import inspect
import logging
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from server.auth import KeyInfo, KeyStore
from server.errors import ApiError
from server.metrics import Metrics
from server.oip_core import InferRequest, InferResponse, InputTensor, OipService, RequestedOutput
from server.proto import grpc_service_pb2 as pb
from server.proto import grpc_service_pb2_grpc as pb_grpc
from server.proto_wire import RepeatedField

log = logging.getLogger("s4d.grpc")

SERVICE = "inference.GRPCInferenceService"
#: HTTP status of an ApiError -> gRPC status code
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
#: RPCs open without an API key, as /v2/health/* are over HTTP
PUBLIC_RPCS = frozenset({"ServerLive", "ServerReady"})
#: datatype -> InferTensorContents field (FP16 and BYTES-free types: raw only)
CONTENTS_FIELD = {
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}


def _param(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


class Undecodable:
    """What a request message that does not parse becomes (not protobuf, truncated, a string
    field that is not UTF-8): the RPC answers INVALID_ARGUMENT, `ModelStreamInfer` an
    `error_message`. (grpc's own answer to a deserializer that raises is UNKNOWN, with a
    traceback logged for every such message: any client could fill the logs.)"""

    def __init__(self, cls):
        self.message = f"request is not a valid {cls.DESCRIPTOR.full_name} message"

    def refuse(self, _key=None):
        raise _bad(self.message)


def _deserializer(cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError:
            return Undecodable(cls)

    return parse


def request_from_proto(r: pb.ModelInferRequest) -> InferRequest:
    """A `ModelInferRequest` as the transport-free `InferRequest`."""
    req = InferRequest(r.model_name, r.model_version, r.id or None,
                       {k: _param(v) for k, v in r.parameters.items()})
    raw = r.raw_input_contents
    if raw and len(raw) != len(r.inputs):
        raise _bad(f"raw_input_contents has {len(raw)} entries for {len(r.inputs)} inputs")
    for i, t in enumerate(r.inputs):
        tensor = InputTensor(t.name, t.datatype, list(t.shape))
        if raw:
            if t.HasField("contents") and t.contents.ByteSize():
                raise _bad(f"input {t.name!r} has both contents and raw_input_contents")
            tensor.raw = raw[i]
        else:
            field = CONTENTS_FIELD.get(t.datatype)
            if field is None:
                raise _bad(f"input {t.name!r}: datatype {t.datatype!r} has no contents field; "
                           "send it in raw_input_contents")
            # read later from the packed bytes, not one Python number per element here: a
            # big request would hold this event loop (every stream of the process) ~75 ns
            # per element
            tensor.values = RepeatedField(t.contents, field)
        req.inputs.append(tensor)
    if r.outputs:
        req.outputs = []
        for o in r.outputs:
            params = {k: _param(v) for k, v in o.parameters.items()}
            req.outputs.append(RequestedOutput(o.name, params.get("classification", 0), params))
    return req


def response_to_proto(resp: InferResponse) -> pb.ModelInferResponse:
    """Outputs as raw_output_contents (what Triton sends; clients read either form)."""
    m = pb.ModelInferResponse(model_name=resp.model, model_version=resp.version,
                              id=resp.id or "")
    for o in resp.outputs:
        m.outputs.add(name=o.name, datatype=o.datatype, shape=o.shape)
        m.raw_output_contents.append(o.raw())
    for k, v in resp.parameters.items():
        if isinstance(v, bool):
            m.parameters[k].bool_param = v
        elif isinstance(v, int):
            m.parameters[k].int64_param = v
        else:
            m.parameters[k].string_param = str(v)
    return m


def presented_key(context) -> str | None:
    """The key of `authorization: Bearer KEY` call metadata (what tritonclient's `headers=`
    sends), or None."""
    for k, v in context.invocation_metadata() or ():
        if k.lower() == "authorization":
            scheme, _, value = (v if isinstance(v, str) else v.decode("latin-1")).partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
    return None


class _Observed:
    """Latency and error accounting of one RPC (or one request of a stream)."""

    def __init__(self, metrics: Metrics, rpc: str):
        self.metrics, self.route = metrics, f"/{SERVICE}/{rpc}"
        self.t0, self.status = time.perf_counter(), 200

    def failed(self, status: int, code: str) -> None:
        self.status = status
        self.metrics.error(code)

    def done(self) -> None:
        self.metrics.request_latency.labels(
            route=self.route, method="GRPC", status=str(self.status)
        ).observe(time.perf_counter() - self.t0)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, oip: OipService, metrics: Metrics, keys: KeyStore | None = None):
        self.oip, self.metrics, self.keys = oip, metrics, keys

    def authorize(self, rpc: str, context) -> KeyInfo | None:
        """The call's API key (None when no keys are configured); ApiError 401 without a
        valid one, as over HTTP."""
        if self.keys is None or rpc in PUBLIC_RPCS:
            return None
        key = presented_key(context)
        info = self.keys.lookup(key) if key else None
        if info is None:
            self.metrics.auth_refused.labels(reason="bad_key" if key else "no_key").inc()
            raise ApiError(401, "unauthorized", "invalid API key" if key else
                           "an API key is required: metadata 'authorization: Bearer KEY'")
        return info

    def allow_model(self, key: KeyInfo | None, model: str) -> None:
        if key is not None and not key.allows(model):
            self.metrics.auth_refused.labels(reason="model").inc()
            raise ApiError(403, "forbidden", f"key {key.name!r} may not use model {model!r}")

    async def _unary(self, rpc: str, context, fn, model: str | None = None):
        obs = _Observed(self.metrics, rpc)
        try:
            key = self.authorize(rpc, context)
            if model is not None:
                self.allow_model(key, model)
            res = fn(key)
            return await res if inspect.isawaitable(res) else res
        except ApiError as exc:
            obs.failed(exc.status, exc.code)
            await context.abort(GRPC_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except Exception as exc:  # noqa: BLE001 - answered, logged, counted
            log.exception("unhandled error in %s", rpc)
            obs.failed(500, "internal")
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")
        finally:
            obs.done()

    async def ServerLive(self, request, context):
        return await self._unary("ServerLive", context,
                                 lambda _key: pb.ServerLiveResponse(live=self.oip.live()))

    async def ServerReady(self, request, context):
        return await self._unary("ServerReady", context,
                                 lambda _key: pb.ServerReadyResponse(ready=self.oip.ready()))

    async def ModelReady(self, request, context):
        return await self._unary("ModelReady", context, lambda _key: pb.ModelReadyResponse(
            ready=self.oip.model_ready(request.name, request.version)), request.name)

    async def ServerMetadata(self, request, context):
        return await self._unary("ServerMetadata", context, lambda _key: json_format.ParseDict(
            self.oip.server_metadata(), pb.ServerMetadataResponse()))

    async def ModelMetadata(self, request, context):
        return await self._unary("ModelMetadata", context, lambda _key: json_format.ParseDict(
            self.oip.model_metadata(request.name, request.version), pb.ModelMetadataResponse()),
            request.name)

    async def ModelStatistics(self, request, context):
        return await self._unary("ModelStatistics", context, lambda _key: json_format.ParseDict(
            {"model_stats": self.oip.statistics(request.name, request.version)},
            pb.ModelStatisticsResponse()), request.name or None)

    async def RepositoryIndex(self, request, context):
        return await self._unary("RepositoryIndex", context, lambda _key: json_format.ParseDict(
            {"models": self.oip.repository_index(request.ready)}, pb.RepositoryIndexResponse()))

    async def ModelInfer(self, request, context):
        async def run(key):
            return response_to_proto(await self.oip.infer(request_from_proto(request), key))

        return await self._unary("ModelInfer", context, run, request.model_name)

    async def ModelStreamInfer(self, request_iterator, context):
        """Each request answered in order, one at a time; a failed request is answered with
        `error_message` and the stream goes on. Sequence requests rely on this order: a
        sequence's chunks are fed in the order they arrive. Without a valid API key (when keys
        are configured) the call ends with UNAUTHENTICATED before any request is read."""
        try:
            key = self.authorize("ModelStreamInfer", context)
        except ApiError as exc:
            obs = _Observed(self.metrics, "ModelStreamInfer")
            obs.failed(exc.status, exc.code)
            obs.done()
            await context.abort(GRPC_CODES[exc.status], exc.message)
        async for request in request_iterator:
            obs = _Observed(self.metrics, "ModelStreamInfer")
            try:
                if isinstance(request, Undecodable):
                    request.refuse()
                self.allow_model(key, request.model_name)
                resp = await self.oip.infer(request_from_proto(request), key)
                out = pb.ModelStreamInferResponse(infer_response=response_to_proto(resp))
            except ApiError as exc:
                obs.failed(exc.status, exc.code)
                out = self._stream_error(request, exc.message)
            except Exception as exc:  # noqa: BLE001 - answered, logged, counted
                log.exception("unhandled error in ModelStreamInfer")
                obs.failed(500, "internal")
                out = self._stream_error(request, f"internal error ({type(exc).__name__})")
            finally:
                obs.done()
            yield out

    @staticmethod
    def _stream_error(request: pb.ModelInferRequest | Undecodable,
                      message: str) -> pb.ModelStreamInferResponse:
        if isinstance(request, Undecodable):
            return pb.ModelStreamInferResponse(error_message=message,
                                               infer_response=pb.ModelInferResponse())
        return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id))

    def _checked(self, rpc: str, method):
        """A unary RPC's handler that answers an undecodable request INVALID_ARGUMENT (after
        the API key check, as a body is parsed after it over HTTP), observed like any RPC."""
        async def handler(request, context):
            if isinstance(request, Undecodable):
                return await self._unary(rpc, context, request.refuse)
            return await method(request, context)

        return handler


def add_servicer(servicer: InferenceServicer, server) -> None:
    """Register the service's RPCs as the generated `add_GRPCInferenceServiceServicer_to_server`
    does, with request deserializers that turn a message that does not parse into an
    `Undecodable` the handlers refuse (instead of grpc's UNKNOWN and logged traceback)."""
    handlers = {}
    for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        req, resp = getattr(pb, m.input_type.name), getattr(pb, m.output_type.name)
        method = getattr(servicer, m.name)
        if m.client_streaming and m.server_streaming:  # ModelStreamInfer answers each itself
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(
                method, request_deserializer=_deserializer(req),
                response_serializer=resp.SerializeToString)
        elif not m.client_streaming and not m.server_streaming:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                servicer._checked(m.name, method), request_deserializer=_deserializer(req),
                response_serializer=resp.SerializeToString)
        else:
            raise TypeError(f"{m.name}: half-streaming RPCs are not served")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


async def start(app) -> grpc.aio.Server | None:
    """Serve gRPC on `settings.grpc_port` (None when 0); raises when the port is taken."""
    st = app.state.s4d
    s = st.settings
    if not s.grpc_port:
        return None
    server = grpc.aio.server(maximum_concurrent_rpcs=s.grpc_max_concurrent_rpcs, options=[
        ("grpc.max_receive_message_length", s.max_body_bytes),
        # a taken port is an error, not a silently shared one; except between the front-end
        # processes of one server (--workers W), which all serve it
        ("grpc.so_reuseport", 1 if s.workers > 0 else 0),
    ])
    add_servicer(InferenceServicer(app.state.oip, st.metrics, getattr(app.state, "s4d_keys", None)),
                 server)
    host = f"[{s.host}]" if ":" in s.host else s.host
    try:
        creds = tls_credentials(s)
        port = (server.add_secure_port(f"{host}:{s.grpc_port}", creds) if creds is not None
                else server.add_insecure_port(f"{host}:{s.grpc_port}"))
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC: cannot bind {host}:{s.grpc_port}: {exc}") from exc
    if port == 0:
        raise RuntimeError(f"gRPC: cannot bind {host}:{s.grpc_port}")
    await server.start()
    log.info("gRPC %s on %s:%d%s", SERVICE, host, port, " (TLS)" if creds is not None else "")
    return server


def tls_credentials(s) -> grpc.ServerCredentials | None:
    """The HTTP listener's certificate for gRPC too (None without one): API keys and audio
    must not travel in clear on one port when the other is encrypted. A certificate file that
    holds the private key as well serves as both, as it does for uvicorn."""
    if s.ssl_certfile is None:
        return None
    try:
        chain = Path(s.ssl_certfile).read_bytes()
        key = Path(s.ssl_keyfile).read_bytes() if s.ssl_keyfile else chain
    except OSError as exc:
        raise RuntimeError(f"gRPC: cannot read the TLS certificate / key: {exc}") from exc
    return grpc.ssl_server_credentials([(key, chain)])


async def stop(server: grpc.aio.Server | None, grace: float) -> None:
    """Stop accepting RPCs, give running ones `grace` seconds, then cancel them."""
    if server is not None:
        await server.stop(grace)
