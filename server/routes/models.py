"""Model metadata (META of PROTOCOL.md), seen through the caller's API key.

A key restricted with `models=a,b` lists only a and b. For a name outside its list the access
middleware answers 403 `forbidden` whether or not such a model is served (server/auth.py), so
neither the list nor the status code tells a key which other models exist; 404 `unknown_model`
is only for names the key may use that are not served.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.routes.common import state_of, visible_models
from server.routes.schemas import ModelList, ModelMeta, error_responses

router = APIRouter(tags=["models"])


@router.get("/v1/models", summary="Metadata of every model the caller may use",
            response_model=ModelList, responses=error_responses(401))
async def list_models(request: Request) -> dict:
    served = state_of(request).registry.models
    return {"models": [served[n].metadata.to_dict() for n in visible_models(request, served)]}


@router.get("/v1/models/{name}", summary="Metadata of one model", response_model=ModelMeta,
            responses=error_responses(401, 403, 404, 503))
async def get_model(name: str, request: Request) -> dict:
    return state_of(request).model_or_error(name).metadata.to_dict()
