"""The OpenAPI document, finished: models of bodies that routes read as raw bytes (a route that
takes JSON and uploads cannot let FastAPI parse the body) go into `components/schemas`, and
FastAPI's default 422 responses go, since this server answers validation errors with 400 and
the protocol's error body (server/app.py)."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
_FASTAPI_422 = ("HTTPValidationError", "ValidationError")


def customize(app: FastAPI, body_models: Iterable[type[BaseModel]]) -> None:
    base = app.openapi
    models = tuple(body_models)

    def openapi() -> dict:
        if getattr(app.state, "s4d_openapi_done", False):
            return app.openapi_schema
        doc = base()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            js = model.model_json_schema(ref_template=_REF)
            for name, sub in js.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas[model.__name__] = js
        for path in doc.get("paths", {}).values():
            for op in path.values():
                if isinstance(op, dict):
                    op.get("responses", {}).pop("422", None)
        text = repr(doc["paths"])
        for name in _FASTAPI_422:
            if f"/{name}'" not in text:
                schemas.pop(name, None)
        app.state.s4d_openapi_done = True
        return doc

    app.openapi = openapi
