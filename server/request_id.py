"""X-Request-ID: one id per HTTP request, so a client's report, a load balancer's log and this
server's log meet on one key. The client's (or the proxy's) id is kept when it is a plain
token, else a new one is made; it goes back in the `X-Request-ID` response header of every
answer (errors too, including the access checks'), in every `{"error": {...}}` body as
`request_id`, and in the log line of a request that failed inside the server."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

HEADER = b"x-request-id"
#: what a client may choose: ids of common proxies and tracers (uuids, hex, dotted, base64)
_VALID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")

#: the id of the HTTP request this task serves (None outside one)
current: ContextVar[str | None] = ContextVar("s4d_request_id", default=None)


def from_headers(headers) -> str:
    """The client's id if it sent one that is a plain token of <= 128 characters, else a new
    uuid4 (hex); a malformed id is replaced, never echoed (it could split a log line)."""
    for name, value in headers:
        if name == HEADER:
            if _VALID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Pure ASGI, outermost: WebSockets pass through (a stream has its session_id)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = from_headers(scope.get("headers", ()))
        scope["s4d.request_id"] = rid
        raw = rid.encode("ascii")

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, raw)]}
            await send(message)

        token = current.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current.reset(token)


def error_body(code: str, message: str) -> dict:
    """The protocol's error body, with the request's id where there is one."""
    detail = {"code": code, "message": message}
    rid = current.get()
    if rid is not None:
        detail["request_id"] = rid
    return {"error": detail}
