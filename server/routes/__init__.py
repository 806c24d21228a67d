"""The /v1 REST API as FastAPI routers, one job each (OIP v2 lives in server/oip_v2.py,
the operator session routes in server/sessions_api.py):

- `health`: /healthz, /readyz, /metrics
- `models`: /v1/models, /v1/models/{name} (filtered by the caller's API key)
- `predict`: POST /v1/models/{name}/predict (JSON, multipart and raw uploads, decoded off the
  event loop)

Bodies and responses are pydantic models (`schemas`); `openapi.customize` puts the bodies
that are read as raw bytes into the OpenAPI document.
"""
