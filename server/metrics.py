"""Prometheus metrics (names fixed by PROTOCOL.md), on a registry owned by one app instance.

With several processes (`--workers W`) the supervisor sets PROMETHEUS_MULTIPROC_DIR: every
process writes its values there and `render()` sums them (gauges over live processes), so any
front-end answers `/metrics` for the whole server.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from server.errors import WS_CLOSE_CODES

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
KNOWN_ERROR_CODES = (
    *WS_CLOSE_CODES, "bad_request", "bad_input", "not_found", "too_large",
    "unsupported_media_type", "not_ready", "timeout", "bad_host",
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _gauge(name: str, doc: str, labels: list[str], registry) -> Gauge:
    return Gauge(name, doc, labels, registry=registry, multiprocess_mode="livesum")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.sessions_active = _gauge(
            "s4d_sessions_active", "Streaming sessions holding a state slot", ["model"], r
        )
        self.sessions_opened = Counter(
            "s4d_sessions_opened", "Streaming sessions opened", ["model"], registry=r
        )
        self.sessions_closed = Counter(
            "s4d_sessions_closed", "Streaming sessions closed", ["model", "reason"], registry=r
        )
        self.sessions_evicted = Counter(
            "s4d_sessions_evicted", "Detached sessions expired by the idle TTL", ["model"], registry=r
        )
        self.samples_processed = Counter(
            "s4d_samples_processed", "Stream samples run through the model", ["model"], registry=r
        )
        self.frames_processed = Counter(
            "s4d_frames_processed", "Stream frames (full or partial) stepped", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "s4d_scheduler_batch_size", "Sessions per batched step (before bucket padding)",
            ["model"], buckets=_BATCH_BUCKETS, registry=r,
        )
        self.queue_depth = _gauge(
            "s4d_queue_depth", "Sessions with a full frame waiting", ["model"], r
        )
        self.step_latency = Histogram(
            "s4d_step_latency_seconds", "One batched frame step (gather, compute, scatter)",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.request_latency = Histogram(
            "s4d_request_latency_seconds", "HTTP request latency",
            ["route", "method", "status"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.errors = Counter("s4d_errors", "Errors answered, by code", ["code"], registry=r)
        for code in KNOWN_ERROR_CODES:  # every documented code is visible at zero
            self.errors.labels(code=code)
        self.slab_bytes_in_use = _gauge(
            "s4d_state_slab_bytes_in_use", "State slab bytes held by sessions", ["model"], r
        )
        self.pending_samples = _gauge(
            "s4d_pending_samples", "Samples of predict work accepted and not finished (budgeted "
            "by max_pending_samples)", ["model"], r,
        )
        self.body_bytes = Gauge(
            "s4d_request_body_bytes", "Bytes of request bodies read and held by requests in "
            "progress (budgeted by max_body_bytes_in_flight, per process)", registry=r,
            multiprocess_mode="livesum",
        )
        self.auth_refused = Counter(
            "s4d_auth_refused", "Requests and WebSocket handshakes refused by access control",
            ["reason"], registry=r,
        )
        for reason in ("no_key", "bad_key", "model", "origin", "host"):
            self.auth_refused.labels(reason=reason)
        self.slab_bytes_total = _gauge(
            "s4d_state_slab_bytes_total", "State slab bytes allocated", ["model"], r
        )

        # resumable sessions (server/engine/persistence.py)
        self.snapshots = Counter(
            "s4d_snapshots", "Session snapshots written to the session store", ["model", "kind"],
            registry=r)
        self.snapshot_failures = Counter(
            "s4d_snapshot_failures", "Snapshots not stored (store unavailable, lease lost, error)",
            ["reason"], registry=r)
        for reason in ("store_unavailable", "stale_lease", "error"):
            self.snapshot_failures.labels(reason=reason)
        self.snapshot_seconds = Histogram(
            "s4d_snapshot_seconds", "One snapshot (capture, encode, store) or one periodic wave",
            ["kind"], buckets=_LATENCY_BUCKETS, registry=r)
        self.gc_pause = Histogram(
            "s4d_gc_pause_seconds", "Pauses of the cyclic garbage collector: the whole process "
            "(and every stream it serves) waits", ["process", "generation"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.gc_pause_cpu = Histogram(
            "s4d_gc_pause_cpu_seconds", "CPU time of the collecting thread in those pauses: "
            "far below the pause, the process was waiting for a core, not collecting",
            ["process", "generation"], buckets=_LATENCY_BUCKETS, registry=r)
        self.loop_lag = Histogram(
            "s4d_event_loop_lag_seconds", "How much later than asked a 10 ms timer of this "
            "process's event loop fired: a stall of the process (every stream it serves waits)",
            ["process"], buckets=_LAG_BUCKETS, registry=r)
        self.sessions_restored = Counter(
            "s4d_sessions_restored", "Sessions restored from a snapshot (resume or operator)",
            ["model"], registry=r)

        self._store_gauges: tuple[Gauge, Gauge] | None = None

    def store_health(self) -> tuple[Gauge, Gauge]:
        """`s4d_session_store_up` and `s4d_session_store_ping_seconds`, created by the one
        process of a replica that checks the store (server/engine/store_health.py): a server
        without a store has neither, rather than a 0 that reads as an outage."""
        if self._store_gauges is None:
            r = self.registry
            self._store_gauges = (
                Gauge("s4d_session_store_up", "1 while the session store answers this "
                      "replica's periodic ping, 0 while it does not", registry=r,
                      multiprocess_mode="livemin"),
                Gauge("s4d_session_store_ping_seconds", "How long the last ping of the session "
                      "store took (a failed one: up to store_health_timeout_s)", registry=r,
                      multiprocess_mode="livemax"),
            )
        return self._store_gauges

    def init_model(self, model: str) -> None:
        """Create the labelled series so that they show up (at zero) before any traffic."""
        for m in (
            self.sessions_active, self.sessions_opened, self.sessions_evicted,
            self.samples_processed, self.frames_processed, self.queue_depth,
            self.slab_bytes_in_use, self.slab_bytes_total, self.sessions_restored,
        ):
            m.labels(model=model)
        self.batch_size.labels(model=model)
        self.step_latency.labels(model=model)

    def watch_process(self, process: str):
        """Watch this process's stalls: its event-loop lag (server/loop_lag.py) and its
        collector pauses; returns the function that stops both."""
        from server.loop_lag import watch_loop_lag

        stop_lag = watch_loop_lag(self.loop_lag.labels(process=process).observe)
        stop_gc = self.watch_gc(process)

        def stop() -> None:
            stop_lag()
            stop_gc()

        return stop

    def watch_gc(self, process: str):
        """Record this process's collector pauses (`process`: engine, frontend or server);
        returns the function that stops it."""
        from server.gc_pauses import watch_pauses

        wall = [self.gc_pause.labels(process=process, generation=str(g)) for g in range(3)]
        cpu = [self.gc_pause_cpu.labels(process=process, generation=str(g)) for g in range(3)]

        def observe(gen: int, seconds: float, cpu_seconds: float) -> None:
            wall[gen].observe(seconds)
            cpu[gen].observe(cpu_seconds)

        return watch_pauses(observe)

    def error(self, code: str) -> None:
        self.errors.labels(code=code).inc()

    def render(self) -> bytes:
        if _multiprocess():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
