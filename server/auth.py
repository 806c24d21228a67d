"""Access control as pure ASGI middleware (HTTP and WebSocket scopes alike): API keys, per-key
model lists, Origin checks (cross-site WebSocket hijacking, drive-by uploads), trusted Host
headers (DNS rebinding) and CORS. Wire contract: server/PROTOCOL.md, "Access control".

Keys file, one key per line (`#` comments):  NAME sha256:HEX [models=a,b] [max_sessions=N]
HEX is the SHA-256 of the key, so the file holds no secret (`s4d keys add NAME` makes one).

The authenticated key reaches the app as ``scope["s4d_key"]``: a :class:`KeyInfo` (name,
models, max_sessions), or None when no keys file is configured. The stream handler enforces
``max_sessions`` and session ownership from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from server.errors import WS_CLOSE_CODES
from server.request_id import error_body

log = logging.getLogger("s4d.auth")

SCOPE_KEY = "s4d_key"
#: browsers cannot set headers on a WebSocket: the key travels as a subprotocol entry
KEY_SUBPROTOCOL_PREFIX = "s4d.key."
#: the protocol the server selects when the client offers it next to its key entry
APP_SUBPROTOCOL = "s4d.v1"

_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.@-]{1,64})\s+sha256:(?P<hex>[0-9a-fA-F]{64})"
                   r"(?P<opts>(\s+\S+)*)\s*$")
_MODEL_PATH = re.compile(r"^/v[12]/models/([^/]+)(?:/|$)")
ALWAYS_PUBLIC = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class KeysFileError(ValueError):
    """A keys file that cannot be used: the server refuses to start rather than run open."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    models: frozenset[str] | None = None  # None: every model
    max_sessions: int | None = None  # None: only the server-wide limits

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def new_key() -> str:
    """A random key: 256 bits, URL-safe and a valid subprotocol token."""
    return "s4d_" + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_line(name: str, key: str, models: list[str] | None = None,
             max_sessions: int | None = None) -> str:
    line = f"{name} sha256:{key_digest(key)}"
    if models:
        line += " models=" + ",".join(models)
    if max_sessions is not None:
        line += f" max_sessions={max_sessions}"
    return line


def parse_keys(text: str, source: str = "keys file") -> dict[str, KeyInfo]:
    """digest hex -> KeyInfo. Raises KeysFileError naming the line."""
    keys: dict[str, KeyInfo] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if not m:
            raise KeysFileError(f"{source}:{n}: expected 'NAME sha256:HEX [models=a,b] "
                                "[max_sessions=N]'")
        models, max_sessions = None, None
        for opt in m.group("opts").split():
            k, _, v = opt.partition("=")
            if k == "models" and v:
                models = frozenset(p for p in v.split(",") if p)
            elif k == "max_sessions" and v.isdigit() and int(v) > 0:
                max_sessions = int(v)
            else:
                raise KeysFileError(f"{source}:{n}: unknown or invalid option {opt!r}")
        digest = m.group("hex").lower()
        if digest in keys:
            raise KeysFileError(f"{source}:{n}: the same key hash appears twice")
        keys[digest] = KeyInfo(m.group("name"), models, max_sessions)
    return keys


class KeyStore:
    """The keys file, re-read when it changes (checked at most once a second), so that
    `s4d keys add` takes effect without a restart. A file that turns invalid keeps the last
    good keys (and logs why)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._mtime: float | None = None
        self._checked = 0.0
        self.keys: dict[str, KeyInfo] = {}
        self._load(strict=True)

    def _load(self, strict: bool) -> None:
        try:
            st = os.stat(self.path)
            if st.st_mtime_ns == self._mtime:
                return
            keys = parse_keys(self.path.read_text("utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError, KeysFileError) as exc:
            if strict:
                raise KeysFileError(f"API keys file {self.path}: {exc}") from exc
            log.error("API keys file %s unusable, keeping the previous keys: %s", self.path, exc)
            return
        self.keys, self._mtime = keys, st.st_mtime_ns
        log.info("API keys loaded: %d key(s) from %s", len(keys), self.path)

    def lookup(self, key: str) -> KeyInfo | None:
        now = time.monotonic()
        if now - self._checked > 1.0:
            self._checked = now
            self._load(strict=False)
        return self.keys.get(key_digest(key))


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None


def _offered_subprotocols(scope) -> list[str]:
    return list(scope.get("subprotocols") or ())


def _origin_allowed(origin: str, host: str | None, allowed: frozenset[str]) -> bool:
    """Same origin (the Origin's host[:port] equals the Host header) or listed."""
    if "*" in allowed or origin.lower() in allowed:
        return True
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    return bool(netloc) and host is not None and netloc == host.lower()


class AccessMiddleware:
    """API keys + model lists + Origin check, for `http` and `websocket` scopes."""

    def __init__(self, app, *, keys: KeyStore | None, allowed_origins: list[str],
                 public_metrics: bool = True, public_docs: bool = True, metrics=None):
        self.app = app
        self.keys = keys
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        public = set(ALWAYS_PUBLIC)
        if public_metrics:
            public.add("/metrics")
        if public_docs:
            public |= DOCS_PATHS
        self.public = frozenset(public)
        # closed paths with no keys to open them: off (a flag that silently did nothing
        # would leave the docs and metrics open to the operator's surprise)
        self.off = frozenset() if keys is not None else frozenset(
            (set() if public_metrics else {"/metrics"}) | (set() if public_docs else DOCS_PATHS))
        self.metrics = metrics

    def _refused(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_refused.labels(reason=reason).inc()

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        origin = _header(scope, b"origin")
        if origin is not None and not _origin_allowed(origin, _header(scope, b"host"),
                                                      self.allowed_origins):
            self._refused("origin")
            msg = f"origin {origin[:100]!r} is not allowed (set allowed_origins)"
            if kind == "websocket":  # refused at the handshake: a cross-site page learns nothing
                return await send({"type": "websocket.close", "code": 4403, "reason": ""})
            return await _http_error(send, 403, "forbidden", msg)
        scope[SCOPE_KEY] = None
        path = scope.get("path", "")
        if path in self.off and kind == "http":
            return await _http_error(send, 404, "not_found",
                                     f"{path} is disabled (no API keys are configured to open it)")
        if self.keys is None or path in self.public or path == "/" or path.startswith("/static/"):
            if self.keys is not None and path in self.public:  # open, but /readyz lists the
                key, _ = _presented_key(scope)  # models of a valid key it was given, no others
                scope[SCOPE_KEY] = self.keys.lookup(key) if key else None
            return await self._through(scope, receive, send)
        key, via_subprotocol = _presented_key(scope)
        info = self.keys.lookup(key) if key else None
        if info is None:
            self._refused("bad_key" if key else "no_key")
            msg = ("invalid API key" if key else
                   "an API key is required: 'Authorization: Bearer KEY'"
                   + (f" or a '{KEY_SUBPROTOCOL_PREFIX}KEY' subprotocol" if kind == "websocket"
                      else ""))
            return await self._deny(scope, receive, send, 401, "unauthorized", msg)
        m = _MODEL_PATH.match(path)
        if m and path != "/v2/models/stats" and not info.allows(m.group(1)):
            self._refused("model")
            return await self._deny(scope, receive, send, 403, "forbidden",
                                    f"key {info.name!r} may not use model {m.group(1)!r}")
        scope[SCOPE_KEY] = info
        return await self._through(scope, receive, send)

    async def _through(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        offered = _offered_subprotocols(scope)
        if not offered:
            return await self.app(scope, receive, send)
        # the key entry never reaches the app (nor its logs)
        scope["subprotocols"] = [p for p in offered if not p.startswith(KEY_SUBPROTOCOL_PREFIX)]
        chosen = _choose_subprotocol(offered)

        async def send_with_subprotocol(message):
            if message["type"] == "websocket.accept" and not message.get("subprotocol") and chosen:
                message = {**message, "subprotocol": chosen}
            await send(message)

        return await self.app(scope, receive, send_with_subprotocol)

    async def _deny(self, scope, receive, send, status: int, code: str, message: str):
        if scope["type"] == "http":
            headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            return await _http_error(send, status, code, message, headers)
        # WebSocket: accept, say why, close with 4401/4403 before `start` is read. A browser
        # sees neither the HTTP status of a refused handshake nor its body; this it can show.
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        accept = {"type": "websocket.accept"}
        chosen = _choose_subprotocol(_offered_subprotocols(scope))
        if chosen:
            accept["subprotocol"] = chosen
        await send(accept)
        await send({"type": "websocket.send",
                    "text": json.dumps({"type": "error", "code": code, "message": message})})
        await send({"type": "websocket.close", "code": WS_CLOSE_CODES[code], "reason": code})


def _choose_subprotocol(offered: list[str]) -> str | None:
    """Browsers fail a handshake that offered protocols unless one is selected: prefer
    `s4d.v1`, else echo the key entry (the client's own key, back to it)."""
    if APP_SUBPROTOCOL in offered:
        return APP_SUBPROTOCOL
    return next((p for p in offered if p.startswith(KEY_SUBPROTOCOL_PREFIX)), None)


def _presented_key(scope) -> tuple[str | None, bool]:
    auth = _header(scope, b"authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), False
    if scope["type"] == "websocket":
        for p in _offered_subprotocols(scope):
            if p.startswith(KEY_SUBPROTOCOL_PREFIX) and len(p) > len(KEY_SUBPROTOCOL_PREFIX):
                return p[len(KEY_SUBPROTOCOL_PREFIX):], True
    return None, False


async def _http_error(send, status: int, code: str, message: str, headers=()) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class TrustedHosts(TrustedHostMiddleware):
    """Starlette's Host check, answering the protocol's JSON error (400 `bad_host`) instead of
    plain text. A page on a rebinding domain sends its own name as Host and is refused. A
    request without a Host header (HTTP/1.0 health checks of load balancers) cannot come from
    a browser, so it passes."""

    def __init__(self, app, allowed_hosts: list[str], metrics=None):
        async def passed(scope, receive, send):
            scope["s4d.host_ok"] = True
            await app(scope, receive, send)

        super().__init__(passed, allowed_hosts=allowed_hosts, www_redirect=False)
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if not any(k == b"host" for k, _ in scope.get("headers", ())):
            scope["s4d.host_ok"] = True
            return await self.app(scope, receive, send)

        async def guarded(message):
            if scope.get("s4d.host_ok"):
                return await send(message)
            if message["type"].endswith("http.response.start"):
                if self.metrics is not None:
                    self.metrics.auth_refused.labels(reason="host").inc()
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 4403, "reason": ""})
                return await _http_error(send, 400, "bad_host",
                                         "the Host header is not an allowed host name")
            # the plain-text body of the refusal is dropped: the JSON one was sent

        return await super().__call__(scope, receive, guarded)


def install(app, settings, metrics) -> None:
    """Add the access-control middleware to a FastAPI app (outermost first: Host, CORS,
    keys/Origin). Raises KeysFileError for an unusable keys file."""
    keys = KeyStore(settings.api_keys_file) if settings.api_keys_file else None
    app.state.s4d_keys = keys  # gRPC (server/oip_grpc.py) checks the same keys
    app.add_middleware(AccessMiddleware, keys=keys, allowed_origins=settings.allowed_origins,
                       public_metrics=settings.public_metrics, public_docs=settings.public_docs,
                       metrics=metrics)
    if settings.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-request-id"],
                           expose_headers=["x-request-id"], max_age=600)
    hosts = settings.resolve_allowed_hosts()
    if hosts != ["*"]:
        app.add_middleware(TrustedHosts, allowed_hosts=hosts, metrics=metrics)
