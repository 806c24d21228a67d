"""`POST /v1/models/{name}/predict`: batch prediction on the FFT-convolution path.

One route takes JSON (validated by `schemas.PredictJson`), multipart uploads and raw
WAV/FLAC/OGG/CSV/NPY bodies, so it reads the body as bytes (bounded in size and time) and does
every CPU-bound step in the decode pool, never on the event loop: JSON parsing and validation,
multipart parsing (server/multipart.py), audio/CSV/NPY decoding (server/audio.py), and the
encoding of the answer (per-step outputs can be megabytes of JSON).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from model.events import detect, frame_ends
from server import audio, jsonbody, multipart, stream_events
from server.backends.base import ModelMetadata
from server.batcher import BatcherBusy
from server.errors import ApiError
from server.frontend.client import EngineUnavailable, RemoteModel
from server.limits import HttpLimits, app_limits
from server.probs import softmax
from server.routes.common import read_body, state_of
from server.routes.schemas import (
    PredictJson,
    PredictMultipart,
    PredictResponse,
    error_responses,
)
from server.state import ServerState

router = APIRouter(tags=["models"])

#: the request body as OpenAPI sees it: the JSON schema is PredictJson's (server/routes/openapi.py
#: adds the models to the document's components); the uploads are bytes by nature
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictJson"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/PredictMultipart"}},
            **{t: {"schema": {"type": "string", "format": "binary"}}
               for t in ("audio/wav", "audio/flac", "audio/ogg", "application/x-npy")},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}
#: models referenced by REQUEST_BODY, for server/routes/openapi.py
BODY_MODELS = (PredictJson, PredictMultipart)


def limits_of(request: Request) -> HttpLimits:
    """The app's decode pool and pending-sample budget (shared with OIP infer)."""
    return app_limits(request.app)


def _spec(lm: RemoteModel, st: ServerState) -> audio.DecodeSpec:
    s, meta = st.settings, lm.metadata
    return audio.DecodeSpec(
        channels=meta.input_channels, sample_rate=meta.sample_rate, patch=meta.patch_size,
        max_len=s.max_sequence_samples, min_rate=s.min_sample_rate, max_rate=s.max_sample_rate)


def _validation_error(exc: ValidationError) -> ApiError:
    """A body that does not fit PredictJson: `bad_input` where a sequence is wrong (PROTOCOL:
    samples that are not numbers, extra nesting), `bad_request` for the rest."""
    errs = exc.errors(include_input=False, include_url=False)
    msg = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errs[:5])
    in_inputs = all(len(e["loc"]) >= 2 and e["loc"][0] == "inputs" for e in errs)
    return ApiError(400, "bad_input" if in_inputs else "bad_request", msg or "invalid body")


def decode_json(body: bytes, spec: audio.DecodeSpec, max_sequences: int):
    """JSON predict body -> (sequences, per_step, events). Runs in the decode pool."""
    doc = jsonbody.parse(body)
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_request", 'expected an object {"inputs": [seq, ...]}')
    inputs = doc.get("inputs")
    if isinstance(inputs, list) and len(inputs) > max_sequences:  # before validating them
        raise ApiError(413, "too_large", f"{len(inputs)} sequences > limit {max_sequences}")
    try:
        req = PredictJson.model_validate(doc)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if req.sample_rate is not None and req.sample_rate != spec.sample_rate:
        raise ApiError(400, "bad_sample_rate",
                       f"sample_rate {req.sample_rate} != the model's {spec.sample_rate} "
                       "(JSON arrays are not resampled; upload a WAV for that)")
    seqs = [audio.from_json_list(seq, spec.channels, spec.patch, spec.max_len, f"inputs[{i}]")
            for i, seq in enumerate(req.inputs)]
    return seqs, req.per_step, req.events_value()


def decode_form(body: bytes, content_type: str, spec: audio.DecodeSpec, max_files: int):
    """multipart body -> (file parts, per_step). Runs in the decode pool."""
    parts = multipart.parse(body, content_type, max_files=max_files)
    files = [p for p in parts if p.is_file and p.name == "file"]
    if not files:
        raise ApiError(400, "bad_request", 'multipart body needs one or more "file" fields')
    flag = next((p.text().strip().lower() for p in parts if p.name == "per_step"
                 and not p.is_file), "")
    return files, flag in ("1", "true", "yes")


def _gil_bound_size(data: bytes, kind: str) -> int:
    """The size the decode pool weighs for a child process: text (CSV) is parsed number by
    number in C calls that keep the GIL, as JSON is; WAV / FLAC / OGG (libsndfile through cffi,
    which lets the GIL go) and NPY (a copy) decode in threads whatever their size."""
    return len(data) if kind == "csv" else 0


async def _sequences(lm: RemoteModel, request: Request, st: ServerState):
    """Read the body (bounded in bytes and time), then parse/decode it in the decode pool."""
    s, meta = st.settings, lm.metadata
    spec = _spec(lm, st)
    pool = limits_of(request).pool
    full_type = request.headers.get("content-type") or ""
    ctype = full_type.split(";")[0].strip().lower()
    is_json = ctype == "application/json" or ctype.endswith("+json")
    if not is_json and ctype != "multipart/form-data" and audio.kind_of(ctype) is None:
        raise ApiError(415, "unsupported_media_type",
                       f"content type {ctype or '(none)'!r}: send application/json, "
                       "multipart/form-data, audio/wav, audio/flac, audio/ogg, text/csv or "
                       "application/x-npy")
    body = await read_body(request, s.max_body_bytes)
    per_step, events = False, False
    seqs: list[np.ndarray] = []
    if is_json:
        seqs, per_step, events = await pool.run(decode_json, body, spec, s.max_batch_sequences,
                                                size=len(body))
    elif ctype == "multipart/form-data":
        files, per_step = await pool.run(decode_form, body, full_type, spec,
                                         s.max_batch_sequences)
        del body  # the parts hold their own copies
        for i, f in enumerate(files):
            where = f"file[{i}] ({f.filename[:100]})"
            kind = audio.kind_of(f.content_type, f.filename)
            if kind is None:
                raise ApiError(415, "unsupported_media_type",
                               f"{where}: type {str(f.content_type)[:100]!r} is not "
                               "WAV/FLAC/OGG/CSV/NPY")
            data = bytes(f.data)
            seqs.append(await pool.run(audio.decode_payload, data, kind, spec, where,
                                       size=_gil_bound_size(data, kind)))
            f.data = bytearray()
    else:
        kind = audio.kind_of(ctype)
        seqs.append(await pool.run(audio.decode_payload, body, kind, spec, "body",
                                   size=_gil_bound_size(body, kind)))
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


def _prediction(meta: ModelMetadata, logits: np.ndarray, n: int, per_step: bool) -> dict:
    classes = meta.classes
    steps = logits if logits.ndim == 2 else None
    last = logits[-1] if steps is not None else logits
    p = softmax(last.astype(np.float64))
    out: dict[str, Any] = {
        "label": classes[int(np.argmax(p))],
        "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
        "num_samples": int(n),
    }
    if per_step and steps is not None:
        out["per_step"] = softmax(steps.astype(np.float64)).astype(np.float32)
    return out


def _events(meta: ModelMetadata, settings, steps: np.ndarray, n: int) -> list[dict]:
    """The events a stream of this recording reports: the detector on the per-step
    probabilities at the stream's frame ends (pooling none: a frame's prediction is its last
    step's), softmax in float64 then float32 as the engine does."""
    ends = frame_ends(n, meta.frame_size, meta.patch_size)
    rows = steps[[e // meta.patch_size - 1 for e in ends]] if ends else steps[:0]
    probs = softmax(rows.astype(np.float64)).astype(np.float32)
    return detect(meta.classes, settings, ends, probs)


def _frame_events(meta: ModelMetadata, settings, frames: np.ndarray, n: int) -> list[dict]:
    """Events of a pooled model: the detector on the logits after every frame end (softmax in
    float64 then float32, as the engine's stream step)."""
    ends = frame_ends(n, meta.frame_size, meta.patch_size)
    probs = softmax(np.asarray(frames, np.float64)).astype(np.float32)
    return detect(meta.classes, settings, ends, probs)


def _answer(meta: ModelMetadata, name: str, logits: list[np.ndarray], lengths: list[int],
            per_step: bool, detector, pooled_events: bool = False) -> bytes:
    """The response body (PredictResponse). Runs in the decode pool (a child process when the
    per-step rows are many: orjson keeps the GIL while it writes them). `pooled_events`: the
    logits are [frames, K], the prediction after every frame end (the last row is the whole
    recording's)."""
    if pooled_events:
        preds = [_prediction(meta, lg[-1], n, False) for lg, n in zip(logits, lengths, strict=True)]
        for pred, lg, n in zip(preds, logits, lengths, strict=True):
            pred["events"] = _frame_events(meta, detector, lg, n)
        return orjson.dumps({"model": name, "predictions": preds},
                            option=orjson.OPT_SERIALIZE_NUMPY)
    preds = [_prediction(meta, lg, n, per_step) for lg, n in zip(logits, lengths, strict=True)]
    if detector is not None:
        for pred, lg, n in zip(preds, logits, lengths, strict=True):
            pred["events"] = _events(meta, detector, lg, n)
    return orjson.dumps({"model": name, "predictions": preds},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def _answer_size(logits: list[np.ndarray], per_step: bool) -> int:
    """About the bytes of the answer's JSON that scale with the logits (~12 per number written
    out): what the decode pool weighs for a child process. Only per-step rows are written out."""
    return 12 * sum(lg.size for lg in logits) if per_step else 0


@router.post(
    "/v1/models/{name}/predict",
    summary="Batch prediction (FFT convolution path)",
    description="JSON arrays (varying lengths), multipart `file` uploads, or a raw WAV/FLAC/OGG/"
    "CSV/NPY body. Audio is resampled to the model's rate; stereo is mixed down to mono when "
    "the model takes one channel. Limits are checked from headers before decoding, and every "
    "body is parsed off the event loop.",
    openapi_extra=REQUEST_BODY,
    response_class=Response,
    responses={200: {"model": PredictResponse, "description": "one prediction per sequence"},
               **error_responses(400, 401, 403, 404, 408, 413, 415, 503)},
)
async def predict(name: str, request: Request) -> Response:
    st = state_of(request)
    lm = st.model_or_error(name)
    seqs, per_step, detector = await _sequences(lm, request, st)
    lim = limits_of(request)
    # pooled models with events: the prediction after every frame end, the frames a stream's
    # detector sees
    pooled_events = detector is not None and lm.metadata.pooling != "none"
    with lim.budget.reserve(name, sum(len(x) for x in seqs)):
        logits = await run_batch(lm, seqs, frames=pooled_events)
    body = await lim.pool.run(_answer, lm.metadata, name, logits, [len(x) for x in seqs],
                              per_step, detector, pooled_events,
                              size=_answer_size(logits, per_step))
    return Response(body, media_type="application/json")


async def run_batch(lm: RemoteModel, seqs: list[np.ndarray],
                    frames: bool = False) -> list[np.ndarray]:
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
