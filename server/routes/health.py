"""Liveness, readiness and Prometheus metrics (open to load balancers and scrapers; /metrics
can be closed with public_metrics=false, server/auth.py)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.errors import ApiError
from server.routes.common import state_of, visible_models
from server.routes.schemas import Health, Ready, error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness", response_model=Health)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: every model loaded and warmed", response_model=Ready,
            response_model_exclude_unset=True, responses=error_responses(503))
async def readyz(request: Request) -> dict:
    st = state_of(request)
    if st.load_error:
        raise ApiError(503, "not_ready", f"model loading failed: {st.load_error}")
    if st.shutting_down:
        raise ApiError(503, "not_ready", "the server is shutting down")
    if not st.registry.ready:
        raise ApiError(503, "not_ready", "models are still loading")
    # open to everyone: with API keys it names only the models the presented key may use.
    # A store that is down does not make the replica unready (server/PROTOCOL.md, /readyz).
    ready = {"status": "ready", "models": visible_models(request, st.registry.models)}
    store = st.client.store
    if store is not None:  # without a store: no field (no value to misread as an outage)
        ready["session_store"] = store_health(store)
    return ready


def store_health(state: dict) -> dict:
    """Engine 0's check (server/engine/store_health.py) as /readyz shows it."""
    latency, last_ok = state.get("latency_s"), state.get("last_ok_unix")
    return {"up": state.get("up"),
            "latency_ms": None if latency is None else round(latency * 1000, 3),
            "last_ok_s_ago": None if last_ok is None else round(max(0.0, time.time() - last_ok), 3)}


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                       **error_responses(401)})
async def metrics(request: Request) -> Response:
    """Rendered on a worker thread: with --workers the multiprocess collector reads and merges
    every process's files, 50-100 ms at W = 15 on the event loop, where every stream of this
    front-end waited for it (seen as late frames at the load generator's own scrape)."""
    m = state_of(request).metrics
    body = await asyncio.to_thread(m.render)
    return Response(content=body, media_type=m.content_type)
