"""Bounds on the HTTP layer's work: decode threads, pending predict samples, body and header
read timeouts, connection cap. Each one keeps a single client from freezing or starving the
server (issue 12): the event loop only moves bytes, CPU work waits for a bounded pool.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import orjson
from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server import request_id
from server.errors import ApiError
from server.settings import Settings

T = TypeVar("T")


class DecodePool:
    """Runs parsing/decoding in worker threads, at most `threads` at once; the rest wait.
    The event loop stays free, so /healthz and live streams answer while a big upload decodes.

    A thread does not help where the work is one long C call that keeps the GIL: orjson parsing
    a 32 MB JSON body holds it ~0.1 s (2-core machine), pydantic's validation and numpy's list
    conversion as long again, and the event loop of this process (every stream it serves)
    waits that long. Work of `size` >= `process_min_bytes` therefore runs in a child process
    (spawned on first use, `threads` of them; 0 turns this off)."""

    def __init__(self, threads: int, process_min_bytes: int = 0):
        self.threads = threads
        self.process_min_bytes = process_min_bytes
        self._limiter: anyio.CapacityLimiter | None = None  # bound to the running loop lazily
        self._procs: ProcessPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any, size: int = 0) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        if not self.process_min_bytes or size < self.process_min_bytes:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        async with self._limiter:
            return await self._in_child(fn, args)

    async def _in_child(self, fn: Callable[..., T], args: tuple) -> T:
        if self._procs is None:
            self._procs = ProcessPoolExecutor(self.threads,
                                              mp_context=multiprocessing.get_context("spawn"),
                                              initializer=_name_process)
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._procs, _run_reporting_errors, fn, args)
        except BrokenProcessPool:  # the child died (killed, out of memory): a fresh one next time
            self._procs.shutdown(wait=False, cancel_futures=True)
            self._procs = None
            raise ApiError(503, "server_busy", "the decoding process failed; try again",
                           headers={"Retry-After": "1"}) from None
        if outcome[0] == "api_error":
            raise ApiError(*outcome[1:])
        return outcome[1]

    def close(self) -> None:
        """At shutdown: queued decodes cancelled, the children joined (not waiting for them
        left their queues' semaphores to the resource tracker, which warned at exit)."""
        if self._procs is not None:
            self._procs.shutdown(wait=True, cancel_futures=True)
            self._procs = None


def _name_process() -> None:
    """`s4d-decode` in ps / top (Linux), beside the s4d-frontend-N that started it."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write("s4d-decode")
    except OSError:
        pass


def _run_reporting_errors(fn: Callable, args: tuple) -> tuple:
    """In the child: the result, or an ApiError's fields (its constructor is not its args, so
    it would not unpickle as itself)."""
    try:
        return ("ok", fn(*args))
    except ApiError as exc:
        return ("api_error", exc.status, exc.code, exc.message, exc.headers)


class SampleBudget:
    """Pending predict work per model, counted in samples (a 960k-sample request weighs 3,000
    times a 320-sample one). A reservation that would exceed the budget is refused at once with
    503 server_busy and Retry-After, before the work is queued. One request larger than the whole
    budget is still admitted when nothing else is pending (it passed max_sequence_samples)."""

    def __init__(self, limit: int, on_change: Callable[[str, int], None] | None = None):
        self.limit = limit
        self.pending: dict[str, int] = {}
        self.on_change = on_change

    @contextmanager
    def reserve(self, model: str, samples: int):
        held = self.pending.get(model, 0)
        if held and held + samples > self.limit:
            raise ApiError(503, "server_busy",
                           f"model {model!r} has {held} samples of predict work pending "
                           f"(budget {self.limit}); try again later",
                           headers={"Retry-After": str(self.retry_after(held))})
        self._set(model, held + samples)
        try:
            yield
        finally:
            self._set(model, self.pending.get(model, 0) - samples)

    def retry_after(self, held: int) -> int:
        """Seconds, rough: the pending share of the budget, 1..10."""
        return max(1, min(10, math.ceil(10 * held / self.limit)))

    def _set(self, model: str, value: int) -> None:
        self.pending[model] = value
        if self.on_change is not None:
            self.on_change(model, value)


class BodyBudget:
    """Bytes of request bodies held by the requests in progress (one process). Each body is
    bounded by max_body_bytes, but max_connections requests could each hold one at once (2,048
    x 32 MiB); beyond the budget a request is refused 503 before its body is read, and its
    bytes count until its response is sent (BodyBudgetMiddleware gives them back). A body
    larger than the whole budget is still admitted when no other request holds one (it passed
    max_body_bytes; refused, it would be refused on every retry)."""

    SCOPE_KEY = "s4d.body_bytes"  # per request: [bytes it holds]

    def __init__(self, limit: int | None, on_change: Callable[[int], None] | None = None):
        self.limit, self.held, self.on_change = limit, 0, on_change

    def take(self, scope: dict, n: int) -> None:
        """Count n more bytes for the request of `scope`, or ApiError 503 (nothing taken)."""
        mine = scope.get(self.SCOPE_KEY)
        if mine is None or n <= 0:  # outside the middleware (a bare app): not budgeted
            return
        others = self.held - mine[0]
        if self.limit is not None and others and self.held + n > self.limit:
            raise ApiError(503, "server_busy",
                           f"request bodies of {self.held} bytes are being processed (limit "
                           f"{self.limit} bytes in memory); try again later",
                           headers={"Retry-After": "1", "Connection": "close"})
        mine[0] += n
        self._set(self.held + n)

    def give_back(self, scope: dict) -> None:
        mine = scope.get(self.SCOPE_KEY)
        if mine and mine[0]:
            self._set(self.held - mine[0])
            mine[0] = 0

    def _set(self, value: int) -> None:
        self.held = value
        if self.on_change is not None:
            self.on_change(value)


class BodyBudgetMiddleware:
    """Pure ASGI: gives a request's body bytes back to the BodyBudget when it is over."""

    def __init__(self, app, budget: Callable[[], BodyBudget]):
        self.app, self.budget = app, budget

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[BodyBudget.SCOPE_KEY] = [0]
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget().give_back(scope)


@dataclass
class HttpLimits:
    """The decode threads, the pending-sample budget and the body budget of one app."""

    pool: DecodePool
    budget: SampleBudget
    bodies: BodyBudget


def new_limits(st) -> HttpLimits:
    """For a ServerState: pool of `decode_threads`, budget of `max_pending_samples` per model
    (exported as s4d_pending_samples)."""
    gauge = st.metrics.pending_samples
    return HttpLimits(pool=DecodePool(st.settings.decode_threads,
                                      st.settings.decode_process_min_bytes),
                      budget=SampleBudget(st.settings.max_pending_samples,
                                          lambda model, v: gauge.labels(model=model).set(v)),
                      bodies=BodyBudget(st.settings.max_body_bytes_in_flight,
                                        st.metrics.body_bytes.set))


#: where an app keeps its limits; the /v1 predict route looks them up under the same name,
#: so /v1 predict and OIP infer draw on one budget
APP_ATTR = "s4d_rest_limits"


def app_limits(app) -> HttpLimits:
    """The app's limits, made on first use (OIP makes them when its routes are installed)."""
    lim = getattr(app.state, APP_ATTR, None)
    if lim is None:
        lim = new_limits(app.state.s4d)
        setattr(app.state, APP_ATTR, lim)
    return lim


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most `limit` bytes (413) within `timeout_s` seconds (408): a client
    that sends a few bytes a minute cannot hold a worker and a buffer forever."""
    cl = request.headers.get("content-length")
    declared = int(cl) if cl is not None and cl.isdigit() else None
    if declared is not None and declared > limit:
        raise ApiError(413, "too_large", f"body of {cl} bytes exceeds the limit of {limit}")
    bodies = app_limits(request.app).bodies
    bodies.take(request.scope, declared or 0)  # before a byte is read: 503 rather than memory
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "too_large", f"body exceeds the limit of {limit} bytes")
                if declared is None:  # no Content-Length: counted as it comes
                    bodies.take(request.scope, len(chunk))
                chunks.append(chunk)
    except TimeoutError as exc:
        raise ApiError(408, "timeout", f"the request body did not arrive within {timeout_s:g} s "
                       f"({size} bytes received)", headers={"Connection": "close"}) from exc
    except ClientDisconnect:  # the client's own doing, not the server's: no 500, no traceback
        raise ApiError(400, "bad_request", f"the client closed the connection after {size} "
                       "bytes of the body", headers={"Connection": "close"}) from None
    body = b"".join(chunks)
    request._body = body  # let request.form() parse the bytes already read
    return body


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for each request's head: uvicorn only times
    out idle keep-alive connections, so a client trickling header bytes held a socket forever.
    On expiry: 408 and close. The deadline is armed at connect and at each new request."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
                % (len(_HEAD_TIMEOUT_BODY), _HEAD_TIMEOUT_BODY))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        # a keep-alive connection starts its next request: its head gets a fresh deadline
        if getattr(self, "_head_timer", None) is None and (
                self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        super().on_headers_complete()

    def _start_asgi_task(self, cycle, app) -> None:
        # beyond limit_concurrency uvicorn runs its own text/plain 503: answer in the protocol's
        super()._start_asgi_task(cycle, over_connection_cap if app is service_unavailable else app)

    def handle_websocket_upgrade(self) -> None:
        # uvicorn applies limit_concurrency to HTTP requests only: a WebSocket past the cap
        # (which counts them) is refused here, before its handshake, with the same 503
        cap = self.limit_concurrency
        if cap is not None and len(self.connections) >= cap:
            rid, data = _over_cap_body(self.scope)
            self.transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                b"retry-after: 1\r\nconnection: close\r\nx-request-id: %s\r\n"
                b"content-length: %d\r\n\r\n%s" % (rid.encode(), len(data), data))
            self.transport.close()
            return
        super().handle_websocket_upgrade()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


_HEAD_TIMEOUT_BODY = b'{"error": {"code": "timeout", "message": "request headers took too long"}}'


def _over_cap_body(scope) -> tuple[str, bytes]:
    """The request id and the JSON body of the answer beyond `max_connections`."""
    rid = request_id.from_headers(scope.get("headers", ()))
    message = "too many connections to this server; try again shortly"
    path = scope.get("path", "")
    if path == "/v2" or path.startswith("/v2/"):
        return rid, orjson.dumps({"error": message})
    return rid, orjson.dumps({"error": {"code": "server_busy", "message": message,
                                        "request_id": rid}})


async def over_connection_cap(scope, receive, send) -> None:
    """The answer beyond `max_connections` (uvicorn's own is a text/plain 503 without
    Retry-After or X-Request-ID): 503 server_busy, OIP's `{"error": str}` under /v2."""
    rid, data = _over_cap_body(scope)
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(data)),
        (b"retry-after", b"1"), (b"connection", b"close"), (request_id.HEADER, rid.encode())]})
    await send({"type": "http.response.body", "body": data})


def uvicorn_options(settings: Settings) -> dict:
    """uvicorn.Config keywords for TLS, timeouts and the connection cap (server/runner.py)."""
    protocol = type("S4DHttpProtocol", (HeaderTimeoutProtocol,),
                    {"header_timeout_s": settings.header_timeout_s})
    opts: dict[str, Any] = {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
    if settings.ssl_certfile is not None:
        opts["ssl_certfile"] = str(settings.ssl_certfile)
        opts["ssl_keyfile"] = str(settings.ssl_keyfile) if settings.ssl_keyfile else None
    return opts
