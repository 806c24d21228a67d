"""`s4d serve`: every setting as a flag (flags override `S4D_*` environment variables)."""

from __future__ import annotations

import argparse


def flag_names(field: str) -> list[str]:
    """`idle_ttl_s` -> ['--idle-ttl-s', '--idle-ttl']: the field name with dashes, and for
    fields in seconds also without the unit (the flag names before flags were generated)."""
    flags = ["--" + field.replace("_", "-")]
    if field.endswith("_s"):
        flags.append("--" + field[:-2].replace("_", "-"))
    return flags


def _add_setting(p: argparse.ArgumentParser, field: str, info) -> None:
    help_ = (info.description or field.replace("_", " ")).replace("%", "%%")
    env = f"S4D_{field.upper()}"
    if info.annotation is bool:
        p.add_argument(*flag_names(field), dest=field, default=None,
                       action=argparse.BooleanOptionalAction,
                       help=f"{help_} (default {info.default}) [env {env}]")
        return
    from typing import Literal, get_args, get_origin

    choices = list(get_args(info.annotation)) if get_origin(info.annotation) is Literal else None
    metavar = field.upper().removesuffix("_S")
    p.add_argument(*flag_names(field), dest=field, default=None, metavar=metavar,
                   choices=choices, help=f"{help_}{_default_note(info)} [env {env}]")


def _default_note(info) -> str:
    """' (default 8000)' for a setting with a plain default its description does not give
    (None, empty lists and paths are described in words where they matter)."""
    from pathlib import Path

    d = info.get_default(call_default_factory=True)
    text = info.description or ""
    if d is None or isinstance(d, (list, tuple, dict, Path)) or "default:" in text or "(default" in text:
        return ""
    return f" (default {d})".replace("%", "%%")


def register(subparsers) -> argparse.ArgumentParser:
    from server.settings import Settings

    p = subparsers.add_parser(
        "serve", help="run the inference server",
        description="Serve every checkpoint in --checkpoints over REST and WebSocket. "
        "Every flag is a Settings field and also reads from the environment as S4D_<FIELD>.",
    )
    for field, info in Settings.model_fields.items():
        _add_setting(p, field, info)
    p.set_defaults(func=run)
    return p


def settings_from_args(args: argparse.Namespace):
    from server.settings import Settings

    overrides = {k: v for k, v in vars(args).items()
                 if k in Settings.model_fields and v is not None}
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from server.auth import KeysFileError
    from server.runner import serve

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"s4d serve: invalid setting: {exc}")
        return 2
    export_backend_settings(settings)
    try:
        return serve(settings)
    except KeysFileError as exc:
        print(f"s4d serve: {exc}")
        return 2


def export_backend_settings(settings) -> None:
    """Backends read their own knobs through Settings() (S4D_ONNX_*, S4D_PRECISION,
    S4D_COMPILE_STEP, S4D_COMPILE_BATCH, S4D_FUSED_CORE, and the REST lengths that size the kept batch kernels);
    a flag given on the command line must reach them, and the engine processes that inherit
    this environment."""
    import os

    for field in ("onnx_threads", "onnx_cache", "precision", "onnx_device_state", "compile_step",
                  "compile_batch", "fused_core", "predict_chunk_samples", "max_sequence_samples"):
        value = getattr(settings, field)
        if value is not None:
            os.environ[f"S4D_{field.upper()}"] = str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["serve", *(argv or [])] if argv is not None else None)
    if getattr(args, "func", None) is None:
        args = parser.parse_args(["serve"])
    return int(args.func(args) or 0)
