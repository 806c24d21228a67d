"""REST routes: model metadata, batch prediction (FFT path), health and metrics (OIP v2: oip_v2.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from model.events import detect, frame_ends
from server import audio, jsonbody, limits, stream_events
from server.batcher import BatcherBusy
from server.errors import ApiError
from server.frontend.client import EngineUnavailable, RemoteModel
from server.limits import DecodePool, SampleBudget
from server.probs import softmax
from server.state import ServerState

router = APIRouter()


@dataclass
class RestLimits:
    pool: DecodePool
    budget: SampleBudget

_ERR = {"content": {"application/json": {"example": {"error": {"code": "str", "message": "str"}}}}}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {
                            "type": "array",
                            "description": "sequences: [x0, x1, ...] (1 channel) or [[c0..cC-1], ...]",
                            "items": {"type": "array", "items": {}},
                        },
                        "sample_rate": {"type": "integer"},
                        "per_step": {"type": "boolean"},
                    },
                },
                "example": {"inputs": [[0.0, 0.1, -0.2, 0.05]]},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
            "audio/flac": {"schema": {"type": "string", "format": "binary"}},
            "text/csv": {"schema": {"type": "string"}},
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
def state_of(request: Request) -> ServerState:
    return request.app.state.s4d


def limits_of(request: Request) -> RestLimits:
    """The app's decode pool and pending-sample budget, made on first use."""
    app_state = request.app.state
    lim = getattr(app_state, "s4d_rest_limits", None)
    if lim is None:
        st = state_of(request)
        gauge = st.metrics.pending_samples
        lim = RestLimits(
            pool=DecodePool(st.settings.decode_threads),
            budget=SampleBudget(st.settings.max_pending_samples,
                                lambda model, v: gauge.labels(model=model).set(v)),
        )
        app_state.s4d_rest_limits = lim
    return lim


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body within `limit` bytes (413) and the configured body timeout (408)."""
    if timeout_s is None:
        timeout_s = state_of(request).settings.body_timeout_s
    return await limits.read_body(request, limit, timeout_s)


def parse_json(body: bytes) -> Any:
    """Bounded JSON parsing (server/jsonbody.py): 400 for anything unparsable, never a 500."""
    return jsonbody.parse(body)


# ---- health ------------------------------------------------------------------------------
@router.get("/healthz", tags=["health"], summary="Liveness")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Readiness: every model loaded and warmed",
            responses={503: _ERR})
async def readyz(request: Request):
    st = state_of(request)
    if st.load_error:
        raise ApiError(503, "not_ready", f"model loading failed: {st.load_error}")
    if st.shutting_down:
        raise ApiError(503, "not_ready", "the server is shutting down")
    if not st.registry.ready:
        raise ApiError(503, "not_ready", "models are still loading")
    return {"status": "ready", "models": list(st.registry.models)}


@router.get("/metrics", tags=["health"], summary="Prometheus metrics",
            response_class=Response)
async def metrics(request: Request) -> Response:
    m = state_of(request).metrics
    return Response(content=m.render(), media_type=m.content_type)


# ---- models ------------------------------------------------------------------------------
@router.get("/v1/models", tags=["models"], summary="Metadata of every served model")
async def list_models(request: Request) -> dict:
    return {"models": [lm.metadata.to_dict() for lm in state_of(request).registry.models.values()]}


@router.get("/v1/models/{name}", tags=["models"], summary="Metadata of one model",
            responses={404: _ERR})
async def get_model(name: str, request: Request) -> dict:
    return state_of(request).model_or_error(name).metadata.to_dict()


def _prediction(lm: RemoteModel, logits: np.ndarray, n: int, per_step: bool) -> dict:
    classes = lm.metadata.classes
    steps = logits if logits.ndim == 2 else None
    last = logits[-1] if steps is not None else logits
    p = softmax(last.astype(np.float64))
    out: dict[str, Any] = {
        "label": classes[int(np.argmax(p))],
        "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
        "num_samples": int(n),
    }
    if per_step and steps is not None:
        out["per_step"] = softmax(steps.astype(np.float64)).astype(np.float32).tolist()
    return out


def _events(lm: RemoteModel, settings, steps: np.ndarray, n: int) -> list[dict]:
    """The events a stream of this recording reports: the detector on the per-step
    probabilities at the stream's frame ends (pooling none: a frame's prediction is its last
    step's), softmax in float64 then float32 as the engine does."""
    meta = lm.metadata
    ends = frame_ends(n, meta.frame_size, meta.patch_size)
    rows = steps[[e // meta.patch_size - 1 for e in ends]] if ends else steps[:0]
    probs = softmax(rows.astype(np.float64)).astype(np.float32)
    return detect(meta.classes, settings, ends, probs)


def _frame_events(lm: RemoteModel, settings, frames: np.ndarray, n: int) -> list[dict]:
    """Events of a pooled model: the detector on the logits after every frame end (softmax in
    float64 then float32, as the engine's stream step)."""
    meta = lm.metadata
    ends = frame_ends(n, meta.frame_size, meta.patch_size)
    probs = softmax(np.asarray(frames, np.float64)).astype(np.float32)
    return detect(meta.classes, settings, ends, probs)


def _spec(lm: RemoteModel, st: ServerState) -> audio.DecodeSpec:
    s, meta = st.settings, lm.metadata
    return audio.DecodeSpec(
        channels=meta.input_channels, sample_rate=meta.sample_rate, patch=meta.patch_size,
        max_len=s.max_sequence_samples, min_rate=s.min_sample_rate, max_rate=s.max_sample_rate)


def _json_request(body: bytes, spec: audio.DecodeSpec, max_sequences: int):
    """JSON predict body -> (sequences, per_step). Runs in the decode pool."""
    doc = parse_json(body)
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise ApiError(400, "bad_request", 'expected an object {"inputs": [seq, ...]}')
    inputs = doc["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, "bad_request", '"inputs" must be a non-empty array of sequences')
    if len(inputs) > max_sequences:
        raise ApiError(413, "too_large", f"{len(inputs)} sequences > limit {max_sequences}")
    sr = doc.get("sample_rate")
    if sr is not None:
        if isinstance(sr, bool) or not isinstance(sr, int):
            raise ApiError(400, "bad_request", '"sample_rate" must be an integer')
        if sr != spec.sample_rate:
            raise ApiError(400, "bad_sample_rate",
                           f"sample_rate {sr} != the model's {spec.sample_rate} "
                           "(JSON arrays are not resampled; upload a WAV for that)")
    per_step = doc.get("per_step", False)
    if not isinstance(per_step, bool):
        raise ApiError(400, "bad_request", '"per_step" must be a boolean')
    seqs = [audio.from_json_list(seq, spec.channels, spec.patch, spec.max_len, f"inputs[{i}]")
            for i, seq in enumerate(inputs)]
    return seqs, per_step, doc.get("events", False)


async def _sequences_from_request(lm: RemoteModel, request: Request, st: ServerState):
    """Read the body (bounded in bytes and time), then parse/decode it in the decode pool."""
    s, meta = st.settings, lm.metadata
    spec = _spec(lm, st)
    pool = limits_of(request).pool
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype not in ("application/json", "multipart/form-data") and not ctype.endswith("+json") \
            and audio.kind_of(ctype) is None:
        raise ApiError(415, "unsupported_media_type",
                       f"content type {ctype or '(none)'!r}: send application/json, "
                       "multipart/form-data, audio/wav, audio/flac, audio/ogg, text/csv or "
                       "application/x-npy")
    body = await read_body(request, s.max_body_bytes)
    per_step, events = False, False
    seqs: list[np.ndarray] = []
    if ctype == "application/json" or ctype.endswith("+json"):
        seqs, per_step, events = await pool.run(_json_request, body, spec,
                                                s.max_batch_sequences)
    elif ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=s.max_batch_sequences, max_fields=100)
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(400, "bad_request", f"unreadable multipart body: {exc}") from exc
        files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not files:
            raise ApiError(400, "bad_request", 'multipart body needs one or more "file" fields')
        for i, f in enumerate(files):
            kind = audio.kind_of(f.content_type, f.filename)
            if kind is None:
                raise ApiError(415, "unsupported_media_type",
                               f"file[{i}] ({f.filename}): type {f.content_type!r} is not "
                               "WAV/FLAC/OGG/CSV/NPY")
            data = await f.read()
            seqs.append(await pool.run(audio.decode_payload, data, kind, spec,
                                       f"file[{i}] ({f.filename})"))
        ps = form.get("per_step")
        per_step = isinstance(ps, str) and ps.lower() in ("1", "true", "yes")
    else:
        seqs.append(await pool.run(audio.decode_payload, body, audio.kind_of(ctype), spec, "body"))
    if per_step and meta.pooling != "none":
        raise ApiError(400, "bad_request",
                       f"per_step needs a model with pooling 'none' (this one pools {meta.pooling!r})")
    try:
        detector = stream_events.resolve(events, meta) if events is not False else None
    except stream_events.EventsSettingsError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    if detector is not None and meta.pooling != "none" and not meta.streamable:
        raise ApiError(400, "bad_request",
                       "events on /predict need a streamable model (this one is bidirectional: "
                       "it has no prediction after each frame)")
    return seqs, per_step, detector


@router.post(
    "/v1/models/{name}/predict", tags=["models"],
    summary="Batch prediction (FFT convolution path)",
    description="JSON arrays (varying lengths), multipart `file` uploads, or a raw WAV/FLAC/OGG/"
    "CSV/NPY body. Audio is resampled to the model's rate; stereo is mixed down to mono when "
    "the model takes one channel. Limits are checked from headers before decoding.",
    openapi_extra=_PREDICT_BODY,
    responses={400: _ERR, 401: _ERR, 403: _ERR, 404: _ERR, 408: _ERR, 413: _ERR, 415: _ERR,
               503: _ERR},
)
async def predict(name: str, request: Request) -> dict:
    st = state_of(request)
    lm = st.model_or_error(name)
    seqs, per_step, detector = await _sequences_from_request(lm, request, st)
    pooled_events = detector is not None and lm.metadata.pooling != "none"
    with limits_of(request).budget.reserve(name, sum(len(x) for x in seqs)):
        # pooled models with events: the prediction after every frame end (its last row is
        # the whole recording's prediction), the same frames a stream's detector sees
        logits = await run_batch(lm, seqs, frames=pooled_events)
    if pooled_events:
        preds = [_prediction(lm, lg[-1], len(x), False) for lg, x in zip(logits, seqs, strict=True)]
        for pred, lg, x in zip(preds, logits, seqs, strict=True):
            pred["events"] = _frame_events(lm, detector, lg, len(x))
        return {"model": name, "predictions": preds}
    preds = [_prediction(lm, lg, len(x), per_step) for lg, x in zip(logits, seqs, strict=True)]
    if detector is not None:
        for pred, lg, x in zip(preds, logits, seqs, strict=True):
            pred["events"] = _events(lm, detector, lg, len(x))
    return {"model": name, "predictions": preds}


async def run_batch(lm: RemoteModel, seqs: list[np.ndarray], frames: bool = False) -> list[np.ndarray]:
    try:
        if frames:
            return await lm.batcher.predict(seqs, frames=True)
        return await lm.batcher.predict(seqs)
    except BatcherBusy as exc:
        raise ApiError(503, "server_busy", str(exc), headers={"Retry-After": "1"}) from exc
    except EngineUnavailable as exc:
        raise ApiError(503, "server_busy", f"{exc}; try again shortly",
                       headers={"Retry-After": "1"}) from exc
    except RuntimeError as exc:
        if "shutting down" in str(exc):
            raise ApiError(503, "server_busy", "the server is shutting down") from exc
        raise


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.to_body(), status_code=err.status, headers=err.headers)
