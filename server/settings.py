"""Server configuration: environment variables with the `S4D_` prefix, overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: a comma-separated list in env / CLI (`a,b`), or a JSON list in env
CommaList = Annotated[list[str], NoDecode]

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every knob of `s4d serve`. Env: `S4D_<FIELD>` (e.g. `S4D_MAX_SESSIONS=64`)."""

    model_config = SettingsConfigDict(env_prefix="S4D_", extra="ignore")

    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    grpc_port: int = Field(
        0, ge=0, le=65535,
        description="KServe v2 gRPC port (GRPCInferenceService); 0 = no gRPC listener",
    )
    checkpoints: Path = Field(REPO_ROOT / "checkpoints",
                              description="folder of checkpoint folders (default: repo checkpoints/)")
    models: str = Field("all", description="comma-separated model names, or 'all'")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto | cpu | cuda")
    backend: Literal["torch", "onnxruntime"] = Field("torch", description="torch | onnxruntime")

    # processes
    workers: int = Field(
        0, ge=0, le=256,
        description="front-end processes sharing the port, each talking to one engine process "
        "per device over pyzmq; 0 = one process (front-end and engine in one event loop)")
    engines_per_device: int = Field(
        1, ge=1, le=32,
        description="engine processes per device (with --workers W > 0): each steps its own "
        "sessions (new ones go to the least loaded; session ids name their engine), so a "
        "many-core CPU host runs the model on several cores in parallel (the compute threads "
        "are shared out among its CPU engines), and a GPU gets more than one process to drive "
        "it; max_sessions counts per engine")
    round_interval_ms: float = Field(
        4.0, ge=0, le=100,
        description="least time between two stream rounds of a model in the engine: frames "
        "that arrive meanwhile join the batch (fewer, larger steps; adds at most this latency)")
    reuse_port: bool = Field(
        True, description="front-ends listen on their own SO_REUSEPORT sockets (the kernel "
        "spreads connections evenly); off: they accept from one shared socket")
    tick_interval_ms: float = Field(
        4.0, ge=0, le=100,
        description="least time between two messages from a front-end to its engine (0: one "
        "message per event-loop iteration with everything that arrived)")
    frontend_timeout_s: float = Field(
        3.0, gt=0, description="a silent engine (or front-end) is declared lost after this long")

    # streaming sessions
    start_timeout_s: float = Field(
        10.0, gt=0, description="a WebSocket must send `start` within this long, else "
        "`timeout` and close 1008")
    stream_idle_timeout_s: float = Field(
        60.0, ge=0, description="a started stream that sends nothing for this long gets "
        "`timeout` and close 1008; its session stays resumable for the idle TTL (0 = never)")
    max_sessions: int = Field(256, ge=1, description="state slots per model")
    idle_ttl_s: float = Field(30.0, gt=0, description="lifetime of a detached session")
    max_frame_bytes: int = Field(1 << 20, ge=16, description="largest binary WS message")
    max_buffer_samples: int = Field(
        16000 * 4, ge=1, description="per-session buffered samples before reading pauses"
    )
    max_unsent_bytes: int = Field(
        1 << 20, ge=1024, description="results written to a stream's socket and not yet taken "
        "by the client; beyond it the client is too slow: `slow_consumer`, close 1008, the "
        "session stays resumable")
    emit_every: int | None = Field(
        None, ge=0, description="default result period in samples (None = model frame size)"
    )

    # resumable sessions (server/engine/persistence.py)
    session_store: str | None = Field(
        None, description="where session snapshots live between replicas: memory:// (this "
        "process) or redis://HOST:PORT/DB; unset = no snapshots (resume on this process only)")
    snapshot_interval_s: float = Field(
        5.0, gt=0, description="period of the snapshot wave of attached sessions (also on "
        "detach and on drain); a client's replay buffer must cover at least this long")
    lease_wait_s: float = Field(
        1.0, ge=0, description="a resume on this replica waits this long for another live "
        "owner to release the session's lease, then takes it over (its writes are fenced)")
    store_health_interval_s: float = Field(
        5.0, ge=0.05, le=3600, description="with a session store: how often this replica "
        "pings it, idle or not (s4d_session_store_up, /readyz session_store)")
    store_health_timeout_s: float = Field(
        1.0, gt=0, description="a store ping that takes longer counts as the store down "
        "(at most store_health_interval_s)")

    # batch (REST) path
    max_body_bytes: int = Field(32 << 20, ge=1024, description="largest REST body, bytes")
    max_body_bytes_in_flight: int | None = Field(
        512 << 20, ge=1024, description="request bodies held in memory at once by the requests "
        "in progress, per process (a body without Content-Length counts as it arrives): a "
        "request that would go beyond it gets 503 server_busy with Retry-After instead of "
        "memory; empty for no cap")
    max_batch_sequences: int = Field(64, ge=1, description="sequences per request / per forward")
    max_sequence_samples: int = Field(
        16000 * 60, ge=1,
        description="longest REST sequence, in model samples (after resampling); checked from "
        "file headers before decoding")
    max_batch_samples: int = Field(
        1 << 21, ge=1, description="padded B*L budget of one batched forward"
    )
    max_pending_requests: int = Field(
        256, ge=1, description="queued predict requests per model before 503 server_busy"
    )
    max_pending_samples: int = Field(
        1 << 22, ge=1,
        description="per model: samples of predict work accepted but not finished; a request "
        "that would exceed it is refused 503 server_busy with Retry-After")
    predict_chunk_samples: int = Field(
        65536, ge=0, description="batch sequences longer than this run as chunks of it through "
        "the exact recurrence, one device job each, so live streams are stepped in between "
        "(0: one FFT forward whatever the length)")
    batch_window_ms: float = Field(3.0, ge=0, description="how long the batcher collects requests")

    # decoding (REST uploads)
    decode_threads: int = Field(
        2, ge=1, description="worker threads that parse/decode REST bodies (off the event loop); "
        "more concurrent requests wait for a thread")
    decode_process_min_bytes: int = Field(
        4 << 20, ge=0, description="JSON and CSV bodies at least this large are parsed in a "
        "child process: parsing keeps the GIL (~3 ms per MB), which would stall the event loop "
        "and every stream of this process (0: always in a thread)")
    min_sample_rate: int = Field(1000, ge=1, description="lowest WAV/FLAC sample rate accepted")
    max_sample_rate: int = Field(384000, ge=1, description="highest WAV/FLAC sample rate accepted")

    # HTTP timeouts and limits
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a connection may take to send a request's headers")
    body_timeout_s: float = Field(
        30.0, gt=0, description="seconds a REST request may take to send its body (408 after)")
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="seconds an idle keep-alive HTTP connection stays open")
    max_connections: int | None = Field(
        2048, ge=1, description="concurrent connections + WebSockets before 503 (uvicorn "
        "limit_concurrency); empty for no cap")
    grpc_max_concurrent_rpcs: int | None = Field(
        2048, ge=1, description="gRPC calls in progress (unary and streaming) before a new one "
        "is refused RESOURCE_EXHAUSTED, so many big messages at once cannot exhaust memory "
        "(grpc.aio maximum_concurrent_rpcs); empty for no cap")
    max_header_bytes: int = Field(
        64 << 10, ge=1024, description="largest request head (request line + headers), bytes")

    # access control (server/auth.py)
    api_keys_file: Path | None = Field(
        None, description="file of API keys (`NAME sha256:HEX [models=a,b] [max_sessions=N]` "
        "per line); set: every route but /healthz, /readyz needs `Authorization: Bearer KEY`")
    public_metrics: bool = Field(True, description="/metrics open without a key (false and no "
                                 "keys file: /metrics is off, 404)")
    public_docs: bool = Field(True, description="/docs and /openapi.json open without a key "
                              "(false and no keys file: the docs are off, 404)")
    allowed_origins: CommaList = Field(
        default_factory=list,
        description="browser origins (scheme://host[:port]) allowed besides the server's own, "
        "for WebSockets and CORS; '*' for any")
    allowed_hosts: CommaList | None = Field(
        None, description="accepted Host headers ('*.example.com' patterns); default: loopback "
        "names when bound to a loopback address, any otherwise")
    ssl_certfile: Path | None = Field(None, description="TLS certificate (PEM); enables https/wss")
    ssl_keyfile: Path | None = Field(None, description="TLS private key (PEM)")

    compute_threads: int | None = Field(
        None, ge=1,
        description="intra-op threads for torch / onnxruntime on the CPU (default: cores - 1, "
        "leaving one core to the event loop; oversubscribed thread pools stall every op)",
    )

    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32", description="matrix-product precision of the torch backend: fp32 (exact) | "
        "tf32 (CUDA tensor cores; same as fp32 on a CPU) | bf16; streaming state stays float32")
    compile_step: bool = Field(
        False, description="fuse the torch backend's streaming step with torch.compile "
        "(Inductor) before CUDA graphs capture it: 1.6-2.4x faster steps on an H200 (bench/"
        "RESULTS.md), start-up longer by seconds per model; a CPU needs a C++ compiler; if "
        "compiling fails the plain step serves")
    compile_batch: bool = Field(
        False, description="fuse the torch backend's REST forwards (/predict, OIP batch "
        "infer, events on whole recordings) with torch.compile (Inductor, dynamic shapes): "
        "1.6x at batch 64 on an H200 (bench/RESULTS.md), start-up longer by 10-30 s per "
        "model; a CPU needs a C++ compiler, and there it is faster for some shapes and slower for "
        "others (bench/RESULTS.md): leave it off on a CPU; if compiling fails the plain forward "
        "serves")
    fused_core: bool = Field(
        True, description="on CUDA in fp32, run the S4D core of frames of one block (<= 16 "
        "steps: the keyword models) as one Triton kernel per layer (model/fused_core.py; "
        "checked against the GEMM form at load, which serves if Triton fails)")
    gil_switch_interval_ms: float = Field(
        0.5, gt=0, le=100, description="the engine process's interpreter switch interval: how "
        "long its event loop may keep the GIL from the device lane thread, which needs it "
        "back after each torch call of a step (Python's default is 5 ms)")
    onnx_threads: int | None = Field(
        None, ge=1, description="intra-op threads of ONNX Runtime sessions (default: "
        "compute_threads)")
    onnx_device_state: bool | None = Field(
        None, description="ONNX Runtime streaming state stays on the execution device between "
        "steps (IOBinding, no host copies per step); default: on with CUDA, off on the CPU")
    onnx_cache: Path | None = Field(
        None, description="cache of exported ONNX graphs (default ~/.cache/s4d-serve/onnx)")

    warmup: bool = Field(True, description="run a warm-up forward at load")
    exit_on_load_error: bool = Field(
        True, description="exit (status 4) when a model fails to load, as Triton's "
        "--exit-on-error: an orchestrator sees the failure and a typo in --models does not "
        "leave a server that is never ready; off: keep running, /readyz 503 naming the error")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug | info | warning | error")
    log_format: Literal["text", "json"] = Field(
        "text", description="text lines | json: one JSON object per line (time, level, "
        "logger, process, message, request_id of the HTTP request it belongs to, exc)")
    graceful_timeout_s: float = Field(10.0, ge=0, description="seconds to finish streams on shutdown")

    @model_validator(mode="after")
    def _store_health_timeout(self):
        if self.store_health_timeout_s > self.store_health_interval_s:
            raise ValueError(f"store_health_timeout_s ({self.store_health_timeout_s}) must not "
                             f"exceed store_health_interval_s ({self.store_health_interval_s})")
        return self

    @field_validator("models")
    @classmethod
    def _strip_models(cls, v: str) -> str:
        return ",".join(p.strip() for p in v.split(",") if p.strip()) or "all"

    @field_validator("allowed_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, v):
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                import json

                return json.loads(v)
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    def resolve_allowed_hosts(self) -> list[str]:
        """Loopback bind: only loopback Host headers (a DNS-rebinding page cannot reach a local
        server); any other bind (containers, LAN) cannot know its public names: '*'."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts or ["*"]
        if self.host in ("127.0.0.1", "localhost", "::1"):
            return ["127.0.0.1", "localhost", "::1", "[::1]"]
        return ["*"]

    def model_names(self) -> list[str] | None:
        """Requested model names, or None for every checkpoint found."""
        if self.models.strip().lower() == "all":
            return None
        return [m for m in self.models.split(",") if m]

    def resolve_compute_threads(self, device: str = "cpu") -> int:
        """Intra-op threads of one engine: compute_threads, else cores - 1, shared out among
        the engines on the CPU (engines_per_device of them with --workers)."""
        if self.compute_threads:
            return self.compute_threads
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
        engines = self.engines_per_device if self.workers > 0 and device == "cpu" else 1
        return max(1, (cores - 1) // engines)

    def resolve_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
