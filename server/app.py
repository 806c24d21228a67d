"""`create_app(settings) -> FastAPI`: wiring of registry, schedulers, routes, metrics, logs."""

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

from server import oip_grpc, oip_v2, rest
from server.errors import ApiError
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.settings import Settings
from server.state import ServerState
from server.ws import stream_endpoint

log = logging.getLogger("s4d.app")
STATIC_DIR = Path(__file__).resolve().parent / "static"

_HTTP_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
    415: "unsupported_media_type", 503: "server_busy",
}


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("s4d").setLevel(level.upper())


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
    for lm in st.registry.models.values():
        if lm.scheduler is not None:
            for s in list(lm.scheduler.sessions.values()):
                lm.scheduler.close_session(s, "shutdown")


async def _reaper(st: ServerState) -> None:
    ttl = st.settings.idle_ttl_s
    period = min(1.0, max(0.05, ttl / 4))
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        for lm in list(st.registry.models.values()):
            if lm.scheduler is not None:
                n = lm.scheduler.expire(now, ttl)
                if n:
                    log.info("idle_ttl model=%s evicted=%d", lm.name, n)


async def _load(st: ServerState) -> None:
    try:
        await st.registry.load_all()
    except Exception as exc:
        st.load_error = f"{type(exc).__name__}: {exc}"
        log.error("model loading failed: %s", st.load_error)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    st = ServerState(settings=settings, metrics=metrics, registry=ModelRegistry(settings, metrics))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("starting: checkpoints=%s models=%s backend=%s device=%s max_sessions=%d",
                 settings.checkpoints, settings.models, settings.backend,
                 st.registry.device, settings.max_sessions)
        grpc_server = await oip_grpc.start(app)  # None unless settings.grpc_port
        loop = asyncio.get_running_loop()
        st.tasks.append(loop.create_task(_load(st), name="s4d-load"))
        st.tasks.append(loop.create_task(_reaper(st), name="s4d-reaper"))
        try:
            yield
        finally:
            await oip_grpc.stop(grpc_server, settings.graceful_timeout_s)
            await drain(st)
            for t in st.tasks:
                t.cancel()
            await asyncio.gather(*st.tasks, return_exceptions=True)
            await st.registry.close()
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
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        metrics.error("bad_request")
        errs = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": {"code": "bad_request", "message": errs or "invalid request"}},
                            status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        metrics.error("internal")
        return JSONResponse({"error": {"code": "internal", "message": type(exc).__name__}},
                            status_code=500)

    app.include_router(rest.router)
    oip_v2.install(app)  # /v2 routes, OIP error bodies on /v2 paths
    app.add_api_websocket_route("/v1/models/{name}/stream", stream_endpoint, name="stream")

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return JSONResponse({"service": "s4d-serve", "docs": "/docs", "models": "/v1/models"})

    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app
