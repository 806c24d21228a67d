"""What every /v1 router needs: the app's state, the caller's API key, bounded body reads."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import Request

from server import limits
from server.auth import SCOPE_KEY, KeyInfo
from server.state import ServerState


def state_of(request: Request) -> ServerState:
    return request.app.state.s4d


def caller_key(request: Request) -> KeyInfo | None:
    """The API key of this request (server/auth.py), None when no keys are configured."""
    return request.scope.get(SCOPE_KEY)


def keys_configured(request: Request) -> bool:
    return state_of(request).settings.api_keys_file is not None


def visible_models(request: Request, names: Iterable[str]) -> list[str]:
    """The models this caller may see: every one without keys; with keys, those its key's
    `models=` list allows (none for a request without a valid key, e.g. on /readyz)."""
    names = list(names)
    if not keys_configured(request):
        return names
    key = caller_key(request)
    return [n for n in names if key is not None and key.allows(n)]


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body within `limit` bytes (413) and the configured body timeout (408)."""
    if timeout_s is None:
        timeout_s = state_of(request).settings.body_timeout_s
    return await limits.read_body(request, limit, timeout_s)
