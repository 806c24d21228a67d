"""Pydantic models of the /v1 REST bodies (PROTOCOL.md "REST"): request validation and the
OpenAPI document come from these, not from hand-written checks and schema dicts.

Responses are declared for the docs and for schema checks (schemathesis); `extra="allow"`
on the metadata models keeps fields a newer server adds from being dropped on the way out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic.json_schema import WithJsonSchema


# ---- errors -----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(description="a PROTOCOL.md error code, e.g. bad_input, unknown_model")
    message: str
    request_id: str | None = Field(
        None, description="the request's X-Request-ID (the client's, or one the server made)")


class ErrorBody(BaseModel):
    """Every /v1 error: `{"error": {"code", "message", "request_id"}}`."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for FastAPI routes: these statuses answer an ErrorBody."""
    return {s: {"model": ErrorBody, "description": _STATUS_TEXT.get(s, "error")}
            for s in statuses}


_STATUS_TEXT = {
    400: "bad request (code says why)", 401: "unauthorized: no or invalid API key",
    403: "forbidden: the key may not use this model (or this session)",
    404: "unknown model (or session)", 408: "the body did not arrive in time",
    409: "conflict (snapshot of another version / model, session busy)", 413: "too large",
    415: "unsupported media type", 503: "busy, loading or shutting down (Retry-After)",
}


# ---- health -----------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"]


class StoreHealth(BaseModel):
    up: bool | None = Field(description="the store answered this replica's last ping")
    latency_ms: float | None = Field(description="how long that ping took (a failed one: up "
                                     "to store_health_timeout_s)")
    last_ok_s_ago: float | None = Field(description="seconds since the store last answered "
                                        "(null: not since this replica started)")


class Ready(BaseModel):
    status: Literal["ready"]
    models: list[str] = Field(description="served models (with API keys: those the presented "
                              "key may use; none without a key)")
    session_store: StoreHealth | None = Field(
        None, description="the session store's health (absent without a store); a store down "
        "leaves the replica ready: streams and predictions do not need it")


# ---- models -----------------------------------------------------------------------------------
class EventsMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    enabled: bool
    threshold: float
    hysteresis: float
    holdoff_ms: float
    min_on_ms: float = 0.0
    onset_lag_ms: float = 0.0
    label_thresholds: dict[str, float] | None = None
    background: list[str]
    changes_only: bool = False


class ModelMeta(BaseModel):
    """META of PROTOCOL.md."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str
    task: str
    sample_rate: int
    input_channels: int
    classes: list[str]
    frame_size: int = Field(description="samples per streaming frame")
    patch_size: int
    streamable: bool
    state_bytes_per_session: int
    parameters: int
    pooling: Literal["mean", "last", "ema", "none"]
    backend: str
    device: str
    events: EventsMeta | dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelMeta]


# ---- predict ----------------------------------------------------------------------------------
_NUMBERS = {"type": "array", "items": {"type": "number"}}
#: one sequence: [x0, x1, ...] (1 channel) or [[c0..cC-1], ...] (C channels). Validated by the
#: vectorised decoder (server/audio.py from_json_list: numbers only, float32 range, channel
#: count, length limits) in the decode pool, not element by element here.
Sequence = Annotated[list[Any], WithJsonSchema({
    "type": "array", "minItems": 1,
    "description": "[x0, x1, ...] (1 channel) or [[c0..cC-1], ...] (C channels)",
    "anyOf": [_NUMBERS, {"type": "array", "items": _NUMBERS}],
})]


class EventsOverride(BaseModel):
    """Event detector settings a request may override (PROTOCOL.md "Events")."""

    model_config = ConfigDict(extra="forbid")

    threshold: StrictFloat | StrictInt | None = None
    hysteresis: StrictFloat | StrictInt | None = None
    holdoff_ms: StrictFloat | StrictInt | None = None
    min_on_ms: StrictFloat | StrictInt | None = None
    onset_lag_ms: StrictFloat | StrictInt | None = None
    label_thresholds: dict[StrictStr, StrictFloat | StrictInt] | None = None
    background: list[StrictStr] | None = None
    changes_only: StrictBool | None = None


class PredictJson(BaseModel):
    """`POST /v1/models/{name}/predict` with `application/json`."""

    model_config = ConfigDict(json_schema_extra={"example": {"inputs": [[0.0, 0.1, -0.2, 0.05]]}})

    inputs: list[Sequence] = Field(min_length=1, description="sequences; lengths may differ")
    sample_rate: StrictInt | None = Field(None, description="must equal the model's (JSON "
                                          "arrays are not resampled)")
    per_step: StrictBool = Field(False, description="per-step probabilities (pooling none)")
    events: StrictBool | EventsOverride = Field(False, description="the events a stream of "
                                                "each recording reports (streamable models)")

    @field_validator("events", mode="before")
    @classmethod
    def _events_kind(cls, v: Any) -> Any:
        if not isinstance(v, bool | dict):
            raise ValueError("events must be true, false or an object of detector settings")
        return v

    def events_value(self) -> bool | dict[str, Any]:
        if isinstance(self.events, EventsOverride):
            return self.events.model_dump(exclude_none=True)
        return self.events


class PredictMultipart(BaseModel):
    """`multipart/form-data`: one or more `file` parts (WAV/FLAC/OGG/CSV/NPY, each by its own
    content type or file name), optional `per_step` field."""

    file: list[bytes] = Field(min_length=1)
    per_step: Literal["true", "false", "1", "0", "yes", "no"] | None = None


class Event(BaseModel):
    label: str
    offset: int
    probability: float


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    num_samples: int
    per_step: list[list[float]] | None = Field(None, description="with per_step")
    events: list[Event] | None = Field(None, description="with events")


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]
