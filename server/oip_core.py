"""Open Inference Protocol v2, transport-free: tensors in, the batch path, tensors out, stats.

The HTTP router (server/oip_v2.py) and the gRPC service (server/oip_grpc.py) both parse their
wire format into an `InferRequest`, call `OipService.infer` and encode the `InferResponse`;
everything OIP means (datatypes, shapes, requested outputs, classification, versions,
statistics, server and model metadata) is decided here once. Errors are `ApiError`s; each
transport renders them its own way (`{"error": msg}` + status, or a gRPC status).

Inference goes through `lm.batcher.predict(list[[L, C] float32]) -> list[logits]`, the same
coroutine as `/v1/.../predict`, so the two agree exactly and an engine client that keeps
that coroutine slots in unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any

import numpy as np

from server import audio
from server.errors import ApiError
from server.frontend.client import RemoteModel
from server.probs import softmax
from server.state import ServerState

if TYPE_CHECKING:
    from server.auth import KeyInfo
    from server.limits import HttpLimits

SERVER_NAME = "s4d-serve"
MODEL_VERSION = "1"  # one version per checkpoint folder
INPUT_NAME = "input"
PROBS_NAME = "probabilities"
LABEL_NAME = "label"
OUTPUT_NAMES = (PROBS_NAME, LABEL_NAME)
#: extensions answered over HTTP (Triton names); gRPC answers the same subset it declares
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration",
              "model_repository", "statistics")

#: tensors up to this size are converted on the event loop (well under a millisecond)
INLINE_DECODE_BYTES = 64 << 10

#: OIP numeric datatype -> little-endian numpy dtype (raw / binary tensor layout)
NUMERIC_TYPES: dict[str, np.dtype] = {
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
}


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


# ---- neutral request / response -----------------------------------------------------------
@dataclass
class InputTensor:
    """One input: exactly one of `raw` (little-endian bytes) or `values` (numbers, any nesting)."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes | memoryview | None = None
    values: Any = None


@dataclass
class RequestedOutput:
    name: str
    classification: int = 0  # > 0: top-k "score:index:label" strings instead of the scores
    parameters: dict[str, Any] = field(default_factory=dict)  # transport flags (binary_data)


@dataclass
class InferRequest:
    model: str
    version: str = ""
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None  # None: every output


@dataclass
class OutputTensor:
    """`array`: FP32 values, or (BYTES) an object array of `bytes`."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray
    requested: RequestedOutput | None = None

    def raw(self) -> bytes:
        """The binary layout: little-endian values; BYTES as 4-byte length + bytes each."""
        if self.datatype == "BYTES":
            return serialize_bytes(self.array)
        return np.ascontiguousarray(self.array, NUMERIC_TYPES[self.datatype]).tobytes()

    def values(self) -> list:
        """Flat row-major values for JSON (BYTES decoded as UTF-8 strings)."""
        flat = self.array.reshape(-1)
        if self.datatype == "BYTES":
            return [b.decode("utf-8", "replace") for b in flat]
        return flat.tolist()


@dataclass
class InferResponse:
    model: str
    version: str
    id: str | None
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)  # e.g. sequence_offset


@dataclass(frozen=True)
class SequenceControl:
    """Triton sequence-batcher parameters of one request (served by server/oip_sequences.py)."""

    sequence_id: int | str
    start: bool
    end: bool
    #: `sequence_samples_sent`: the samples the client has sent this sequence before this
    #: request, checked by the server (a retried chunk is not applied twice)
    samples_sent: int | None = None


def serialize_bytes(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(len(b).to_bytes(4, "little"))
        parts.append(b)
    return b"".join(parts)


def sequence_control(params: dict[str, Any]) -> SequenceControl | None:
    """The request's sequence parameters, or None (no `sequence_id`, or Triton's 0 / "")."""
    sid = params.get("sequence_id")
    if sid is None:
        return None
    # the type first: false and 0.0 equal 0, and were taken for "no sequence"
    if isinstance(sid, bool) or not isinstance(sid, (int, str)):
        raise bad_request("parameter sequence_id must be an integer or a string")
    if sid == 0 or sid == "":
        return None
    flags = {}
    for key in ("sequence_start", "sequence_end"):
        v = params.get(key, False)
        if not isinstance(v, bool):
            raise bad_request(f"parameter {key} must be a boolean")
        flags[key] = v
    sent = params.get("sequence_samples_sent")
    if sent is not None and (isinstance(sent, bool) or not isinstance(sent, int) or sent < 0):
        raise bad_request("parameter sequence_samples_sent must be an integer >= 0")
    if sent and flags["sequence_start"]:
        raise bad_request("parameter sequence_samples_sent must be 0 with sequence_start")
    return SequenceControl(sid, flags["sequence_start"], flags["sequence_end"], sent)


# ---- statistics ----------------------------------------------------------------------------
@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += int(ns)

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """Per-model OIP counters (Triton statistics extension). One infer request = one
    execution (the batcher may merge several requests into one forward underneath);
    inference_count counts sequences (batch rows)."""

    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def to_dict(self, name: str) -> dict:
        return {
            "name": name,
            "version": MODEL_VERSION,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
            },
        }


# ---- the service ---------------------------------------------------------------------------
def _server_version() -> str:
    try:
        return importlib_metadata.version(SERVER_NAME)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


class OipService:
    """OIP v2 semantics over the app's `ServerState`; shared by HTTP and gRPC."""

    def __init__(self, st: ServerState, limits: HttpLimits | None = None):
        from server.limits import new_limits
        from server.oip_sequences import OipSequences

        self.st = st
        self.stats: dict[str, ModelStats] = {}
        self.version = _server_version()
        #: decode threads and the pending-sample budget, shared with /v1 predict
        self.limits = limits if limits is not None else new_limits(st)
        self.sequences = OipSequences(st)

    # -- health and metadata
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        st = self.st
        return st.registry.ready and not st.shutting_down and not st.load_error

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": self.version, "extensions": list(EXTENSIONS)}

    def model(self, name: str, version: str | None = "") -> RemoteModel:
        lm = self.st.model_or_error(name)
        if version not in (None, "", MODEL_VERSION):
            raise ApiError(404, "unknown_model",
                           f"model {name!r} has no version {version!r} (versions: ['1'])")
        return lm

    def model_ready(self, name: str, version: str = "") -> bool:
        self.model(name, version)
        return not self.st.shutting_down

    def model_metadata(self, name: str, version: str = "") -> dict:
        meta = self.model(name, version).metadata
        k, c = len(meta.classes), meta.input_channels
        return {
            "name": name,
            "versions": [MODEL_VERSION],
            "platform": f"s4d_{meta.backend}",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, -1, c]}],
            "outputs": [
                {"name": PROBS_NAME, "datatype": "FP32", "shape": [-1, k]},
                {"name": LABEL_NAME, "datatype": "BYTES", "shape": [-1]},
            ],
        }

    def model_config(self, name: str, version: str = "") -> dict:
        """Triton's JSON model configuration, as far as it describes this model."""
        lm = self.model(name, version)
        meta, s = lm.metadata, self.st.settings
        gpu = str(meta.device).startswith("cuda")

        def param(v: Any) -> dict:
            return {"string_value": str(v)}

        return {
            "name": name,
            "platform": f"s4d_{meta.backend}",
            "backend": meta.backend,
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": s.max_batch_sequences,
            "input": [{"name": INPUT_NAME, "data_type": "TYPE_FP32",
                       "dims": [-1, meta.input_channels]}],
            "output": [
                {"name": PROBS_NAME, "data_type": "TYPE_FP32", "dims": [len(meta.classes)]},
                {"name": LABEL_NAME, "data_type": "TYPE_STRING", "dims": [1],
                 "reshape": {"shape": []}},
            ],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(s.batch_window_ms * 1000),
            },
            "instance_group": [{"name": f"{name}_0", "kind": "KIND_GPU" if gpu else "KIND_CPU",
                                "count": 1}],
            "parameters": {
                "sample_rate": param(meta.sample_rate),
                "input_channels": param(meta.input_channels),
                "classes": param(",".join(meta.classes)),
                "frame_size": param(meta.frame_size),
                "patch_size": param(meta.patch_size),
                "pooling": param(meta.pooling),
                "streamable": param(str(meta.streamable).lower()),
                "max_sequence_samples": param(s.max_sequence_samples),
            },
        }

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        reg = self.st.registry
        out = [{"name": n, "version": MODEL_VERSION, "state": "READY"} for n in reg.models]
        if not ready_only:
            out += [{"name": n, "version": MODEL_VERSION, "state": "UNAVAILABLE", "reason": why}
                    for n, why in reg.failed.items()]
        return sorted(out, key=lambda m: m["name"])

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        if not name and version:  # a version of no model (Triton: all models take no version)
            raise bad_request("a model version needs a model name")
        names = [self.model(name, version).name] if name else list(self.st.registry.models)
        return [self.stats.get(n, ModelStats()).to_dict(n) for n in names]

    # -- inference
    async def infer(self, req: InferRequest, key: KeyInfo | None = None) -> InferResponse:
        """Batch inference, or (with `sequence_id`) a chunk of a sequence fed into its streaming
        session. Tensor decoding runs in the decode threads; batch work is counted against the
        pending-sample budget of /v1 predict (503 server_busy beyond it). `key`: the API key
        of the request (sequences belong to it)."""
        lm = self.model(req.model, req.version)
        stats = self.stats.setdefault(lm.name, ModelStats())
        t0 = time.perf_counter_ns()
        params: dict[str, Any] = {}
        try:
            seq = sequence_control(req.parameters)
            wanted = self._requested(req.outputs, lm)
            run = self._decoder(req.inputs)
            if seq is not None:
                rows = await run(self._sequence_rows, lm, req.inputs)
                t1 = time.perf_counter_ns()
                r = await self.sequences.infer(lm, seq.sequence_id, seq.start, seq.end, rows, key,
                                               samples_sent=seq.samples_sent)
                t2 = time.perf_counter_ns()
                k = len(lm.metadata.classes)
                probs = (np.full((1, k), np.nan, np.float32) if r.probs is None
                         else r.probs.reshape(1, k))
                outputs = self._outputs_from_probs(lm, probs, wanted)
                params["sequence_offset"] = r.consumed
                n = 1
            else:
                seqs = await run(self._sequences, lm, req.inputs)
                t1 = time.perf_counter_ns()
                with self.limits.budget.reserve(lm.name, sum(len(x) for x in seqs)):
                    logits = await run_batch(lm, seqs)
                t2 = time.perf_counter_ns()
                outputs = self._outputs(lm, logits, wanted)
                n = len(seqs)
            t3 = time.perf_counter_ns()
        except BaseException:
            stats.fail.add(time.perf_counter_ns() - t0)
            raise
        stats.compute_input.add(t1 - t0)
        stats.compute_infer.add(t2 - t1)
        stats.compute_output.add(t3 - t2)
        stats.success.add(t3 - t0)
        stats.inference_count += n
        stats.execution_count += 1
        stats.last_inference_ms = int(time.time() * 1000)
        return InferResponse(lm.name, MODEL_VERSION, req.id, outputs, params)

    def _decoder(self, inputs: list[InputTensor]):
        """Where to convert the tensors: inline when they are small (a stream chunk; the
        thread hop would cost more than the work), else in the decode threads."""
        size = 0
        for t in inputs:
            if t.raw is not None:
                size += len(t.raw)
            elif isinstance(t.shape, list) and all(isinstance(d, int) for d in t.shape):
                size += 8 * int(np.prod(t.shape, dtype=np.float64))
            else:
                size += INLINE_DECODE_BYTES + 1
        if size <= INLINE_DECODE_BYTES:
            async def inline(fn, *args):
                return fn(*args)
            return inline
        return self.limits.pool.run

    def _requested(self, outputs: list[RequestedOutput] | None,
                   lm: RemoteModel) -> list[RequestedOutput]:
        if not outputs:
            return [RequestedOutput(n) for n in OUTPUT_NAMES]
        seen = set()
        for o in outputs:
            if o.name not in OUTPUT_NAMES:
                raise bad_request(f"unknown output {o.name!r}; model {lm.name!r} has "
                                  f"{list(OUTPUT_NAMES)}")
            if o.name in seen:
                raise bad_request(f"output {o.name!r} requested twice")
            seen.add(o.name)
            k = len(lm.metadata.classes)
            if isinstance(o.classification, bool) or not isinstance(o.classification, int) \
                    or not 0 <= o.classification:
                raise bad_request(f"output {o.name!r}: classification must be a count >= 0")
            if o.classification and o.name != PROBS_NAME:
                raise bad_request(f"classification applies to {PROBS_NAME!r}, not {o.name!r}")
            o.classification = min(o.classification, k)
        return outputs

    def _input_array(self, lm: RemoteModel, inputs: list[InputTensor]) -> np.ndarray:
        """The one input as float64 [B, L, C], shape and limits checked before conversion."""
        meta, s = lm.metadata, self.st.settings
        if len(inputs) != 1:
            raise bad_request(f"expected exactly one input named {INPUT_NAME!r}, got {len(inputs)}")
        t = inputs[0]
        if t.name != INPUT_NAME:
            raise bad_request(f"unknown input {t.name!r}; model {lm.name!r} takes {INPUT_NAME!r}")
        if t.datatype not in NUMERIC_TYPES:
            raise bad_request(f"input datatype {t.datatype!r} is not one of "
                              f"{', '.join(NUMERIC_TYPES)}")
        shape = t.shape
        if (not isinstance(shape, list) or len(shape) not in (2, 3)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise bad_request(f"input shape must be [B, L] or [B, L, C] of positive integers, "
                              f"got {shape!r}")
        b, length = shape[0], shape[1]
        c = shape[2] if len(shape) == 3 else 1
        if c != meta.input_channels:
            raise bad_request(f"{c} channels, model {lm.name!r} takes {meta.input_channels} "
                              "(shape [B, L, C])", "bad_input")
        if b > s.max_batch_sequences:
            raise ApiError(413, "too_large", f"batch {b} > limit {s.max_batch_sequences}")
        if length > s.max_sequence_samples:
            raise ApiError(413, "too_large",
                           f"{length} samples per sequence > limit {s.max_sequence_samples}")
        return tensor_array(t, b * length * c).reshape(b, length, c)

    def _sequences(self, lm: RemoteModel, inputs: list[InputTensor]) -> list[np.ndarray]:
        """Batch rows, each a whole sequence (at least one patch). Runs in the decode pool."""
        meta, s = lm.metadata, self.st.settings
        arr = self._input_array(lm, inputs)
        return [audio.check_sequence(arr[i], meta.input_channels, meta.patch_size,
                                     s.max_sequence_samples, f"input[{i}]")
                for i in range(len(arr))]

    def _sequence_rows(self, lm: RemoteModel, inputs: list[InputTensor]) -> np.ndarray:
        """The samples of one sequence request: one row [1, L(, C)] of any length >= 1."""
        meta, s = lm.metadata, self.st.settings
        if not lm.streamable:
            raise bad_request(f"model {lm.name!r} is bidirectional: it serves whole sequences "
                              "only (no sequence_id)", "not_streamable")
        arr = self._input_array(lm, inputs)
        if len(arr) != 1:
            raise bad_request(f"a sequence request carries one row (shape [1, L]), got {len(arr)}")
        return audio.check_sequence(arr[0], meta.input_channels, 1, s.max_sequence_samples,
                                    "input[0]")

    def _outputs(self, lm: RemoteModel, logits: list[np.ndarray],
                 wanted: list[RequestedOutput]) -> list[OutputTensor]:
        last = np.stack([lg[-1] if lg.ndim == 2 else lg for lg in logits])
        probs = softmax(last.astype(np.float64)).astype(np.float32)
        return self._outputs_from_probs(lm, probs, wanted)

    def _outputs_from_probs(self, lm: RemoteModel, probs: np.ndarray,
                            wanted: list[RequestedOutput]) -> list[OutputTensor]:
        """Outputs of probabilities [B, K]; a row of NaN (no prediction yet) has label ""."""
        classes = lm.metadata.classes
        b, k = probs.shape
        out = []
        for o in wanted:
            if o.name == LABEL_NAME:
                labels = np.array([b"" if np.isnan(row).any() else classes[int(row.argmax())].encode()
                                   for row in probs], object)
                out.append(OutputTensor(LABEL_NAME, "BYTES", [b], labels, o))
            elif o.classification:
                top = np.argsort(-probs, axis=1, kind="stable")[:, : o.classification]
                cells = [f"{probs[r, i]:f}:{i}:{classes[i]}".encode()
                         for r in range(b) for i in top[r]]
                arr = np.array(cells, object).reshape(b, o.classification)
                out.append(OutputTensor(PROBS_NAME, "BYTES", [b, o.classification], arr, o))
            else:
                out.append(OutputTensor(PROBS_NAME, "FP32", [b, k], probs, o))
        return out


def tensor_array(t: InputTensor, count: int) -> np.ndarray:
    """The input's `count` elements as a flat float64 array (raw bytes or listed values)."""
    dtype = NUMERIC_TYPES[t.datatype]
    if t.raw is not None:
        if len(t.raw) != count * dtype.itemsize:
            raise bad_request(f"input {t.name!r}: {len(t.raw)} bytes of {t.datatype}, shape "
                              f"needs {count * dtype.itemsize}", "bad_input")
        return np.frombuffer(t.raw, dtype).astype(np.float64)
    if t.values is None:
        raise bad_request(f"input {t.name!r} has no data", "bad_input")
    try:
        # no dtype here: numpy would read "1.5" and true as numbers, which /v1 predict refuses
        arr = np.asarray(t.values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise bad_request(f"input {t.name!r}: data is not numeric ({exc})", "bad_input") from exc
    if arr.dtype.kind not in "iuf":
        raise bad_request(f"input {t.name!r}: data must be numbers (no strings, booleans or "
                          "nulls)", "bad_input")
    if dtype.kind in "iu" and arr.size:  # an integer datatype holds integers in its range
        info = np.iinfo(dtype)
        if (arr.dtype.kind == "f" and not np.array_equal(arr, np.trunc(arr))) \
                or arr.min() < info.min or arr.max() > info.max:
            raise bad_request(f"input {t.name!r}: {t.datatype} data must be integers in "
                              f"[{info.min}, {info.max}]", "bad_input")
    arr = arr.astype(np.float64, copy=False).reshape(-1)
    if arr.size != count:
        raise bad_request(f"input {t.name!r}: data has {arr.size} values, shape needs {count}",
                          "bad_input")
    return arr


async def run_batch(lm: RemoteModel, seqs: list[np.ndarray]) -> list[np.ndarray]:
    """The batch path, exactly as /v1 predict runs it (same refusals as 503 server_busy)."""
    from server.rest import run_batch as v1_run_batch

    return await v1_run_batch(lm, seqs)
