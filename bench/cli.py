"""`s4d bench core|serve|onnx`: the benchmarks behind bench/RESULTS.md."""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "core": ("bench.core", "chunked step vs per-sample loop vs FFT recompute", "execute"),
    "serve": ("bench.serve", "concurrent real-time streams against a real server", "run"),
    "onnx": ("bench.onnx_step", "frame step, torch vs onnxruntime", "run"),
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark (results go to bench/RESULTS.md)")
    which = p.add_subparsers(dest="benchmark", required=True)
    for name, (module_name, help_text, entry) in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            q = which.add_parser(name, help=f"(unavailable: {exc})")
            q.set_defaults(func=lambda _a, _e=exc: print(f"s4d bench: unavailable: {_e}") or 2)
            continue
        if not hasattr(module, "add_arguments"):
            continue
        q = which.add_parser(name, help=help_text)
        module.add_arguments(q)
        q.set_defaults(func=getattr(module, entry))
