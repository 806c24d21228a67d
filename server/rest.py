"""The /v1 REST API: the routers of server/routes/ (health, models, predict) as one router for
the app, and the protocol's error response. OIP v2 is server/oip_v2.py."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.errors import ApiError
from server.routes import health, models, predict
from server.routes.common import read_body, state_of  # noqa: F401 - used by sessions_api
from server.routes.predict import run_batch  # noqa: F401 - the v1 batch path, used by oip_core

router = APIRouter()
for _r in (health.router, models.router, predict.router):
    router.include_router(_r)

#: request-body models the OpenAPI document needs (server/routes/openapi.py)
BODY_MODELS = predict.BODY_MODELS


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.to_body(), status_code=err.status, headers=err.headers)
