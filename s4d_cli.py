"""The `s4d` command: a thin dispatcher over subcommands that live with the code they drive.

Each subcommand module exposes `register(subparsers)`; it is imported only when needed, so
`s4d info` does not pay for importing the server stack and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = {
    "info": "model.cli",
    "train": "model.train_cli",
    "export": "model.export_cli",
    "import": "model.import_cli",
    "serve": "server.cli",
    "keys": "server.keys_cli",
    "predict": "clients.cli",
    "stream": "clients.cli",
    "bench": "bench.cli",
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s4d", description="S4D streaming inference toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    registered: set[str] = set()
    for name, module_name in SUBCOMMAND_MODULES.items():
        if selected is not None and name != selected:
            continue
        if module_name in registered:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an optional extra is missing
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(func=lambda _a, _e=exc: _missing(_e))
            continue
        module.register(sub)
        registered.add(module_name)
    return parser


def _missing(exc: Exception) -> int:
    print(f"s4d: this subcommand needs an optional dependency: {exc}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = argv[0] if argv and argv[0] in SUBCOMMAND_MODULES else None
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
