"""The engine as its own process: a pyzmq ROUTER on an ipc:// endpoint, no client sockets.

Started by the supervisor (`server.supervisor`) with the server's settings; restarted by it if
it dies. Prometheus values go to the shared multiprocess directory, so any front-end's
`/metrics` shows the engine's series.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from server.engine.engine import Engine
from server.engine.wire import decode, encode
from server.errors import LOAD_ERROR_EXIT
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("s4d.engine")


async def serve_engine(settings: Settings, endpoint: str, device: str | None = None,
                       index: int = 0) -> int:
    """Serve front-ends until SIGTERM / SIGINT: 0, or LOAD_ERROR_EXIT when a model failed to
    load and `exit_on_load_error` (the supervisor then stops the server)."""
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(endpoint)
    engine = Engine(settings, Metrics(), device=device, index=index, watch_frontends=True,
                    shared_rings=True)

    def send(identity: bytes, header: dict, arrays: list) -> None:
        sock.send_multipart([identity, *encode(header, arrays)], copy=False)

    engine.attach_transport(send)
    unwatch = engine.metrics.watch_process("engine")
    stop = asyncio.Event()
    status = [0]
    if settings.exit_on_load_error:
        def load_failed(_error: str) -> None:
            status[0] = LOAD_ERROR_EXIT
            stop.set()

        engine.on_load_error = load_failed
    await engine.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("engine listening on %s (pid %d, epoch %d)", endpoint, os.getpid(), engine.epoch)

    drain = zmq.Socket.shadow(sock.underlying)  # sync view: no future per queued message

    async def reader() -> None:
        while True:
            batch = [await sock.recv_multipart(copy=False)]
            while True:  # everything already queued, without a trip through the event loop
                try:
                    batch.append(drain.recv_multipart(zmq.NOBLOCK, copy=False))
                except zmq.Again:
                    break
            for frames in batch:
                try:
                    header, arrays = decode(frames[1:])
                    engine.on_message(frames[0].bytes, header, arrays)
                except Exception:
                    log.exception("engine: bad message")

    task = loop.create_task(reader())
    await stop.wait()
    await _frontends_gone(engine, settings.graceful_timeout_s + 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await engine.stop()
    unwatch()
    sock.close(linger=0)
    return status[0]


async def _frontends_gone(engine: Engine, limit_s: float) -> None:
    """Stop only once every front-end has said `bye` (or gone silent), within `limit_s`.
    The supervisor signals the engines after the front-ends have drained, but a signal to
    the whole process group (Ctrl-C in a terminal, systemd's default KillMode, `kill -PGID`)
    reaches the engines at the same time: stopping then cut every draining stream off its
    `final` (each got `internal`, 1011, once its front-end gave the engine up)."""
    deadline = time.monotonic() + limit_s
    if engine.frontends:
        log.info("stop requested: waiting for %d front-end(s) to finish their streams",
                 engine.frontends)
    while engine.frontends and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def set_process_name(name: str) -> None:
    """What `top`, `ps -o comm` and psutil show for this process (Linux; 15 characters)."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def engine_main(settings_json: str, endpoint: str, device: str | None = None,
                index: int = 0) -> None:
    """Entry point of the engine process (spawned: no torch state inherited)."""
    from server.logs import configure_logging

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level, settings.log_format)
    set_process_name(f"s4d-engine-{index}")
    main = serve_engine(settings, endpoint, device, index)
    try:  # uvicorn[standard] brings uvloop and the front-ends run on it; the engine's loop
        import uvloop  # handles every tick of every front-end, and its callbacks cost less there
    except ImportError:  # pragma: no cover - a plain asyncio loop serves the same
        code = asyncio.run(main)
    else:
        code = uvloop.run(main)
    if code:
        sys.exit(code)
