"""Running the app under uvicorn with a graceful drain before uvicorn closes the sockets."""

from __future__ import annotations

import uvicorn

from server import logredact
from server.app import create_app, drain
from server.limits import uvicorn_options
from server.logs import configure_logging, uvicorn_log_config
from server.settings import Settings
from server.ws_direct import uvicorn_ws_option


class S4DServer(uvicorn.Server):
    """On shutdown (SIGTERM/SIGINT or `should_exit`), first finish every open stream (flush,
    `final`, close 1001 `shutting_down`), then let uvicorn close connections (it would
    otherwise drop WebSockets with 1012 before the app's lifespan shutdown runs)."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self._s4d_app = app

    async def on_tick(self, counter: int) -> bool:
        if self._s4d_app.state.s4d.exit_code is not None:  # e.g. a model failed to load
            return True
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None) -> None:
        try:
            await drain(self._s4d_app.state.s4d)
        finally:
            await super().shutdown(sockets=sockets)


def build_server(settings: Settings, *, engine_endpoints: list[str] | None = None,
                 identity: bytes = b"inproc", **uvicorn_kwargs) -> S4DServer:
    app = create_app(settings, engine_endpoints=engine_endpoints, identity=identity)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_format),
        ws_max_size=max(4 * settings.max_frame_bytes, 1 << 22),
        timeout_graceful_shutdown=int(settings.graceful_timeout_s) + 1,
        lifespan="on",
        # TLS, timeouts, connection cap; the WebSocket protocol with the streams' direct lane
        **{**uvicorn_options(settings), **uvicorn_ws_option(), **uvicorn_kwargs},
    )
    logredact.install()  # session ids out of access / WebSocket log lines
    return S4DServer(config, app)


def raise_open_files_limit() -> None:
    """Every stream is a socket: lift the soft open-files limit (often 1024) to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep what we have
        pass


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    raise_open_files_limit()  # children inherit it
    if settings.workers > 0:
        from server.supervisor import supervise

        return supervise(settings)
    server = build_server(settings)
    try:
        server.run()
    except KeyboardInterrupt:
        # Ctrl-C: uvicorn has shut down gracefully and re-raises the signal; that is the
        # normal way to stop `s4d serve`, not a crash to print a traceback for
        pass
    return server._s4d_app.state.s4d.exit_code or 0
