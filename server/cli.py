"""`s4d serve`: every setting as a flag (flags override `S4D_*` environment variables)."""

from __future__ import annotations

import argparse

# flag -> Settings field (type conversion is done by pydantic)
FLAGS: dict[str, tuple[str, str]] = {
    "--host": ("host", "bind address"),
    "--port": ("port", "TCP port"),
    "--checkpoints": ("checkpoints", "folder of checkpoint folders (default: repo checkpoints/)"),
    "--models": ("models", "comma-separated model names, or 'all'"),
    "--device": ("device", "auto | cpu | cuda"),
    "--workers": ("workers", "front-end processes (0 = one process with the engine inside)"),
    "--tick-interval-ms": ("tick_interval_ms", "least ms between front-end -> engine messages"),
    "--backend": ("backend", "torch | onnxruntime"),
    "--max-sessions": ("max_sessions", "state slots per model"),
    "--idle-ttl": ("idle_ttl_s", "seconds a detached session stays resumable"),
    "--max-frame-bytes": ("max_frame_bytes", "largest WebSocket message, bytes"),
    "--max-body-bytes": ("max_body_bytes", "largest REST body, bytes"),
    "--max-buffer-samples": ("max_buffer_samples", "per-session buffer before reads pause"),
    "--max-batch-sequences": ("max_batch_sequences", "sequences per request / forward"),
    "--max-sequence-samples": ("max_sequence_samples", "longest REST sequence"),
    "--max-batch-samples": ("max_batch_samples", "padded B*L budget per forward"),
    "--max-pending-requests": ("max_pending_requests", "queued predicts before 503"),
    "--batch-window-ms": ("batch_window_ms", "predict micro-batching window"),
    "--emit-every": ("emit_every", "default result period in samples (0 = final only)"),
    "--session-store": ("session_store", "memory:// or redis://HOST:PORT/DB (session snapshots)"),
    "--snapshot-interval": ("snapshot_interval_s", "seconds between snapshot waves"),
    "--lease-wait": ("lease_wait_s", "seconds a resume waits for another owner's lease"),
    "--log-level": ("log_level", "debug | info | warning | error"),
    "--graceful-timeout": ("graceful_timeout_s", "seconds to finish streams on shutdown"),
}


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="run the inference server",
        description="Serve every checkpoint in --checkpoints over REST and WebSocket. "
        "Each flag also reads from the environment as S4D_<FIELD>.",
    )
    for flag, (field, help_) in FLAGS.items():
        p.add_argument(flag, dest=field, default=None, help=f"{help_} [env S4D_{field.upper()}]")
    p.add_argument("--no-warmup", dest="warmup", action="store_const", const=False, default=None,
                   help="skip the warm-up forward at load")
    p.set_defaults(func=run)
    return p


def settings_from_args(args: argparse.Namespace):
    from server.settings import Settings

    overrides = {k: v for k, v in vars(args).items()
                 if k in Settings.model_fields and v is not None}
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from server.runner import serve

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"s4d serve: invalid setting: {exc}")
        return 2
    return serve(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["serve", *(argv or [])] if argv is not None else None)
    if getattr(args, "func", None) is None:
        args = parser.parse_args(["serve"])
    return int(args.func(args) or 0)
