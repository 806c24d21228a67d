"""`s4d keys add NAME`: a new random API key and its keys-file line (server/auth.py).

The key is printed once; the line holds only its SHA-256, so the keys file is no secret.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("keys", help="manage API keys for `s4d serve --api-keys-file`")
    sub = p.add_subparsers(dest="keys_command", required=True)
    add = sub.add_parser(
        "add", help="make a new random key; print it and its keys-file line",
        description="Prints 'key: KEY' (give it to the client; it is not stored) and the line "
        "'NAME sha256:HEX ...' for the keys file (appended to --file when given).")
    add.add_argument("name", help="key name (letters, digits, _ . @ -), shown in logs")
    add.add_argument("--models", default=None, help="comma-separated models this key may use")
    add.add_argument("--max-sessions", type=int, default=None,
                     help="streaming sessions this key may hold at once")
    add.add_argument("--file", type=Path, default=None, help="append the line to this keys file")
    add.set_defaults(func=run_add)
    return p


def run_add(args: argparse.Namespace) -> int:
    from server.auth import KeysFileError, key_line, new_key, parse_keys

    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", args.name):
        print("s4d keys: NAME must be 1-64 of letters, digits, _ . @ -", file=sys.stderr)
        return 2
    if args.max_sessions is not None and args.max_sessions < 1:
        print("s4d keys: --max-sessions must be >= 1", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    key = new_key()
    line = key_line(args.name, key, models, args.max_sessions)
    parse_keys(line)  # the line this prints is one the server reads
    if args.file is not None:
        existing = args.file.read_text("utf-8") if args.file.exists() else ""
        try:
            parse_keys(existing, str(args.file))
        except KeysFileError as exc:
            print(f"s4d keys: not appending to an invalid file: {exc}", file=sys.stderr)
            return 2
        sep = "" if not existing or existing.endswith("\n") else "\n"
        with args.file.open("a", encoding="utf-8") as f:
            f.write(f"{sep}{line}\n")
    print(f"key: {key}")
    print(f"line: {line}")
    return 0
