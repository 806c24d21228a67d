"""`create_app(settings) -> FastAPI`: a front-end (routes, WebSockets, metrics, logs) wired to
its engine, in this process or over pyzmq."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import auth, limits, oip_grpc, oip_v2, rest, sessions_api
from server.errors import LOAD_ERROR_EXIT, ApiError
from server.frontend.client import EngineClient, EnginePool
from server.frontend.links import InprocLink, ZmqLink
from server.gc_pauses import freeze_startup_objects
from server.metrics import Metrics
from server.request_id import RequestIdMiddleware, error_body
from server.routes import openapi
from server.settings import Settings
from server.state import ServerState
from server.ws import stream_endpoint

log = logging.getLogger("s4d.app")
STATIC_DIR = Path(__file__).resolve().parent / "static"

_HTTP_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
    415: "unsupported_media_type", 503: "server_busy",
}


class LatencyMiddleware:
    """Pure ASGI (WebSockets pass through untouched): request latency per route template."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(
                route=path, method=scope.get("method", ""), status=str(status[0])
            ).observe(time.perf_counter() - t0)


async def drain(st: ServerState) -> None:
    """Stop accepting, flush every attached stream and send `final`, then close 1001."""
    if st.shutting_down:
        return
    st.shutting_down = True
    conns = list(st.connections)
    if conns:
        log.info("shutdown: finishing %d open stream(s)", len(conns))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.shutdown() for c in conns), return_exceptions=True),
                st.settings.graceful_timeout_s or None,
            )
        except asyncio.TimeoutError:
            log.warning("shutdown: streams did not finish within %.1fs", st.settings.graceful_timeout_s)


def create_app(settings: Settings | None = None, *, engine_endpoints: list[str] | None = None,
               identity: bytes = b"inproc") -> FastAPI:
    """The front-end app. Without `engine_endpoints` the engine runs in this process and event
    loop (`--workers 0`); with them, the app talks to one engine process per device over pyzmq."""
    settings = settings or Settings()
    metrics = Metrics()
    clients = [
        EngineClient(None, max_buffer_samples=settings.max_buffer_samples,
                     tick_interval_s=settings.tick_interval_ms / 1000,
                     engine_timeout_s=settings.frontend_timeout_s)
        for _ in (engine_endpoints or [None])
    ]
    pool = EnginePool(clients)
    st = ServerState(settings=settings, metrics=metrics, client=pool)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("starting: checkpoints=%s models=%s backend=%s device=%s max_sessions=%d "
                 "engine=%s", settings.checkpoints, settings.models, settings.backend,
                 settings.device, settings.max_sessions, engine_endpoints or "in-process")
        if engine_endpoints is None:
            from server.engine.engine import Engine

            st.engine = Engine(settings, metrics)
            if settings.exit_on_load_error:  # S4DServer stops on it, `s4d serve` exits 4
                st.engine.on_load_error = lambda err: setattr(st, "exit_code", LOAD_ERROR_EXIT)
            clients[0].link = InprocLink(st.engine, identity)
            await st.engine.start()
        else:
            for c, endpoint in zip(clients, engine_endpoints, strict=True):
                c.link = ZmqLink(endpoint, identity)
        await pool.start()
        freeze_startup_objects()  # this process's start-up objects: no collector pauses
        grpc_server = await oip_grpc.start(app)  # None unless settings.grpc_port
        unwatch = metrics.watch_process("frontend" if engine_endpoints else "server")
        try:
            yield
        finally:
            unwatch()
            await oip_grpc.stop(grpc_server, settings.graceful_timeout_s)
            await drain(st)
            rest_limits = getattr(app.state, limits.APP_ATTR, None)
            if rest_limits is not None:  # the decoding child processes, if any were started
                rest_limits.pool.close()
            await pool.stop()
            if st.engine is not None:
                await st.engine.stop()
            log.info("stopped")

    app = FastAPI(
        title="s4d-serve",
        version="1",
        description="Streaming inference for S4D models: REST batch (FFT convolution), "
        "WebSocket streams (exact chunked recurrence), Open Inference Protocol v2 "
        "(HTTP, and gRPC on --grpc-port). "
        "Wire protocol: server/PROTOCOL.md.",
        lifespan=lifespan,
    )
    app.state.s4d = st

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        metrics.error(exc.code)
        return rest.error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        metrics.error(code)
        return JSONResponse(error_body(code, str(exc.detail)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        metrics.error("bad_request")
        errs = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(error_body("bad_request", errs or "invalid request"), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        # Starlette answers this outside every middleware: the id comes from the scope
        rid = request.scope.get("s4d.request_id")
        log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path,
                      rid)
        metrics.error("internal")
        body = error_body("internal", type(exc).__name__)
        if rid is not None:
            body["error"]["request_id"] = rid
        return JSONResponse(body, status_code=500,
                            headers={"x-request-id": rid} if rid is not None else None)

    app.include_router(rest.router)
    oip_v2.install(app)  # /v2 routes, OIP error bodies on /v2 paths
    app.include_router(sessions_api.router)
    app.add_api_websocket_route("/v1/models/{name}/stream", stream_endpoint, name="stream")

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return JSONResponse({"service": "s4d-serve", "docs": "/docs", "models": "/v1/models"})

    openapi.customize(app, rest.BODY_MODELS)
    app.add_middleware(limits.BodyBudgetMiddleware, budget=lambda: limits.app_limits(app).bodies)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    auth.install(app, settings, metrics)  # API keys, Origin, CORS, trusted hosts
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer carries the id
    return app
