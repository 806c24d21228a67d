"""Operator routes that move sessions by hand (PROTOCOL.md "Sessions").

`GET /v1/sessions/{id}/snapshot` -> the snapshot bytes of a live session (taken now) or of the
stored one; `PUT /v1/sessions/{id}` (or `POST /v1/sessions/restore`) with snapshot bytes ->
the session is installed on this replica, detached, resumable by its client for the idle TTL
(with a session store, this replica takes its lease over and stores it). The front-end only
forwards: the engine that owns sessions does the work (server/engine/sessions_ops.py).
The session id is the credential, as for a resume: keep these routes off the public listener
(the shipped HAProxy config passes everything; restrict `/v1/sessions` there if needed).
With API keys, a session is its owner's here too (the snapshot's `owner_key`): another key
gets 403 `session_forbidden` for its snapshot, and may neither install a snapshot owned by
another key nor overwrite a session (live or stored) that another key owns.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server import snapshot as snapshots
from server.auth import SCOPE_KEY
from server.errors import ApiError, StreamError
from server.frontend.client import EngineUnavailable
from server.routes.common import read_body, state_of
from server.routes.schemas import error_responses

router = APIRouter()

_STATUS = {
    "unknown_session": 404, "session_busy": 409, "session_moved": 409, "not_streamable": 409,
    "server_busy": 503, "store_unavailable": 503, "shutting_down": 503,
    **snapshots.HTTP_STATUS,
}


_SNAPSHOT_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary", "description": "snapshot bytes"}}}}}


def _api_error(err: StreamError) -> ApiError:
    return ApiError(_STATUS.get(err.code, 500), err.code, err.message)


def _key_name(request: Request) -> str | None:
    key = request.scope.get(SCOPE_KEY)  # server/auth.py; None when no keys are configured
    return key.name if key is not None else None


def _check_owner(request: Request, meta: dict) -> None:
    if not snapshots.owner_allows(meta.get("owner_key", ""), _key_name(request)):
        raise ApiError(403, "session_forbidden", "that session belongs to another API key")


def _client(request: Request):
    st = state_of(request)
    if st.shutting_down:
        raise ApiError(503, "server_busy", "the server is shutting down")
    if not st.client.ready:
        raise ApiError(503, "server_busy", "the engine is not ready", headers={"Retry-After": "1"})
    return st


@router.get("/v1/sessions/{session_id}/snapshot", tags=["sessions"],
            summary="Snapshot bytes of a live or stored session", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
                       **error_responses(403, 404, 503)})
async def get_snapshot(session_id: str, request: Request) -> Response:
    st = _client(request)
    try:
        data = await st.client.snapshot(session_id)
    except StreamError as err:
        raise _api_error(err) from err
    except EngineUnavailable as exc:
        raise ApiError(503, "server_busy", str(exc)) from exc
    try:
        _check_owner(request, snapshots.read_metadata(data))
    except snapshots.SnapshotError:  # a stored snapshot of another format: no owner to trust
        if _key_name(request) is not None:
            raise ApiError(403, "session_forbidden", "the stored snapshot names no owner") from None
    return Response(content=data, media_type="application/octet-stream",
                    headers={"Content-Disposition": 'attachment; filename="session.s4dsnap"'})


async def _restore(request: Request, session_id: str | None) -> dict:
    st = _client(request)
    body = await read_body(request, st.settings.max_body_bytes)
    try:
        meta = snapshots.read_metadata(body)
    except snapshots.SnapshotError as err:
        raise ApiError(err.http_status, err.code, err.message) from err
    sid = meta.get("session_id", "")
    if session_id is not None and sid != session_id:
        raise ApiError(400, "snapshot_corrupt", f"the snapshot is of session {sid!r}, "
                       f"not {session_id!r}")
    _check_owner(request, meta)
    if _key_name(request) is not None:
        await _check_existing_owner(request, st, sid)
    try:
        info = await st.client.restore(body, sid)
    except StreamError as err:
        raise _api_error(err) from err
    except EngineUnavailable as exc:
        raise ApiError(503, "server_busy", str(exc)) from exc
    return {"session_id": info["session_id"], "model": info["model"],
            "offset": info["received"], "consumed": info["consumed"]}


async def _check_existing_owner(request: Request, st, sid: str) -> None:
    """With keys: a session of that id that exists (live or stored) must be the caller's, or
    a forged snapshot could take another key's session over (the restore steals its lease)."""
    try:
        current = await st.client.snapshot(sid)
    except StreamError as err:
        if err.code == "unknown_session":
            return
        raise _api_error(err) from err
    except EngineUnavailable as exc:
        raise ApiError(503, "server_busy", str(exc)) from exc
    try:
        _check_owner(request, snapshots.read_metadata(current))
    except snapshots.SnapshotError:
        raise ApiError(403, "session_forbidden", "the stored session names no owner") from None


@router.put("/v1/sessions/{session_id}", tags=["sessions"],
            summary="Install a session from its snapshot bytes (detached, resumable)",
            openapi_extra=_SNAPSHOT_BODY, responses=error_responses(400, 403, 404, 408, 409, 413, 503))
async def put_session(session_id: str, request: Request) -> dict:
    return await _restore(request, session_id)


@router.post("/v1/sessions/restore", tags=["sessions"],
             summary="Install a session from its snapshot bytes (id from the snapshot)",
             openapi_extra=_SNAPSHOT_BODY, responses=error_responses(400, 403, 408, 409, 413, 503))
async def restore_session(request: Request) -> dict:
    return await _restore(request, None)
