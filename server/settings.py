"""Server configuration: environment variables with the `S4D_` prefix, overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every knob of `s4d serve`. Env: `S4D_<FIELD>` (e.g. `S4D_MAX_SESSIONS=64`)."""

    model_config = SettingsConfigDict(env_prefix="S4D_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    checkpoints: Path = REPO_ROOT / "checkpoints"
    models: str = Field("all", description="comma-separated model names, or 'all'")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["torch", "onnxruntime"] = "torch"

    # processes
    workers: int = Field(
        0, ge=0, le=256,
        description="front-end processes sharing the port, each talking to one engine process "
        "per device over pyzmq; 0 = one process (front-end and engine in one event loop)")
    round_interval_ms: float = Field(
        2.0, ge=0, le=100,
        description="least time between two stream rounds of a model in the engine: frames "
        "that arrive meanwhile join the batch (fewer, larger steps; adds at most this latency)")
    reuse_port: bool = Field(
        True, description="front-ends listen on their own SO_REUSEPORT sockets (the kernel "
        "spreads connections evenly); off: they accept from one shared socket")
    tick_interval_ms: float = Field(
        1.0, ge=0, le=100,
        description="least time between two messages from a front-end to its engine (0: one "
        "message per event-loop iteration with everything that arrived)")
    frontend_timeout_s: float = Field(
        3.0, gt=0, description="a silent engine (or front-end) is declared lost after this long")

    # streaming sessions
    max_sessions: int = Field(256, ge=1, description="state slots per model")
    idle_ttl_s: float = Field(30.0, gt=0, description="lifetime of a detached session")
    max_frame_bytes: int = Field(1 << 20, ge=16, description="largest binary WS message")
    max_buffer_samples: int = Field(
        16000 * 4, ge=1, description="per-session buffered samples before reading pauses"
    )
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

    # batch (REST) path
    max_body_bytes: int = Field(32 << 20, ge=1024)
    max_batch_sequences: int = Field(64, ge=1, description="sequences per request / per forward")
    max_sequence_samples: int = Field(16000 * 60, ge=1)
    max_batch_samples: int = Field(
        1 << 21, ge=1, description="padded B*L budget of one batched forward"
    )
    max_pending_requests: int = Field(
        256, ge=1, description="queued predict requests per model before 503 server_busy"
    )
    batch_window_ms: float = Field(3.0, ge=0, description="how long the batcher collects requests")

    compute_threads: int | None = Field(
        None, ge=1,
        description="intra-op threads for torch / onnxruntime on the CPU (default: cores - 1, "
        "leaving one core to the event loop; oversubscribed thread pools stall every op)",
    )

    warmup: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    graceful_timeout_s: float = Field(10.0, ge=0)

    @field_validator("models")
    @classmethod
    def _strip_models(cls, v: str) -> str:
        return ",".join(p.strip() for p in v.split(",") if p.strip()) or "all"

    def model_names(self) -> list[str] | None:
        """Requested model names, or None for every checkpoint found."""
        if self.models.strip().lower() == "all":
            return None
        return [m for m in self.models.split(",") if m]

    def resolve_compute_threads(self) -> int:
        if self.compute_threads:
            return self.compute_threads
        import os

        return max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2) - 1)

    def resolve_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
