"""`s4d predict` and `s4d stream`: the client side of the command line.

s4d predict --url http://127.0.0.1:8000 --model kws-s4d a.wav b.csv    # one JSON line per file
s4d stream  --url http://127.0.0.1:8000 --model kws-s4d a.wav --realtime
arecord -q -t raw -f S16_LE -r 16000 -c 1 | s4d stream --model kws-s4d -    # live, until Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

DEFAULT_URL = os.environ.get("S4D_URL", "http://127.0.0.1:8000")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict",
        help="batch predictions for files (WAV, CSV, NPY, WFDB) from a running server",
        description="Send each file to POST /v1/models/{model}/predict and print one JSON "
        "line per file: {file, model, label, probabilities, num_samples}.",
    )
    _common(p)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--per-step", action="store_true", help="include per-step probabilities")
    _scale_arg(p)
    p.set_defaults(func=run_predict)

    s = subparsers.add_parser(
        "stream",
        help="stream a file to a running server over the WebSocket and print live results",
        description="Stream FILE to WS /v1/models/{model}/stream in chunks (resampled and "
        "mixed down to the model's rate/channels here) and print results, then the final one. "
        "FILE '-' streams live input: raw PCM on stdin, as it comes, until EOF or Ctrl-C "
        "(e.g. arecord -q -t raw -f S16_LE -r 16000 -c 1 | s4d stream -).",
    )
    _common(s)
    s.add_argument("file", metavar="FILE", help="audio / ECG file, or - for raw PCM on stdin")
    s.add_argument("--realtime", action="store_true", help="pace chunks at real time")
    s.add_argument("--chunk-ms", type=float, default=20.0, help="chunk length (default 20 ms)")
    s.add_argument(
        "--emit-every",
        type=int,
        default=None,
        help="samples between results (default: the model's frame size; 0: final only)",
    )
    s.add_argument("--encoding", choices=["pcm_s16le", "f32le"], default=None,
                   help="wire encoding (default: pcm_s16le for an unscaled 16-bit WAV at the "
                   "model's rate, else f32le; pcm_s16le clips samples outside -1..1, so not "
                   "for an ECG in mV)")
    s.add_argument("--input-rate", type=int, default=None,
                   help="FILE -: the input's sample rate (default: the model's; else resampled)")
    s.add_argument("--input-channels", type=int, default=1,
                   help="FILE -: interleaved channels of the input (default 1; mixed down)")
    s.add_argument("--input-encoding", choices=["s16le", "f32le"], default="s16le",
                   help="FILE -: little-endian 16-bit PCM (default) or 32-bit float, full scale")
    _scale_arg(s)
    s.add_argument("--json", action="store_true", help="print every message as a JSON line")
    s.add_argument("--max-reconnects", type=int, default=12,
                   help="connection tries in a row without progress before giving up (a server "
                   "that refuses or keeps dropping the stream; default 12, with backoff)")
    s.add_argument("--events", default=None, type=_events_arg,
                   help="event detection: 'off', or a JSON object overriding the model's "
                   "defaults (threshold, hysteresis, holdoff_ms, min_on_ms, onset_lag_ms, label_thresholds, background), e.g. "
                   "'{\"threshold\": 0.9, \"holdoff_ms\": 1000}'")
    s.set_defaults(func=run_stream)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL,
                   help=f"server URL (default: env S4D_URL, else http://127.0.0.1:8000; now {DEFAULT_URL})")
    p.add_argument("--model", default="kws-s4d", help="model name (default kws-s4d)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the server: each HTTP call in all (connect to "
                   "the answer's last byte); for a stream, its WebSocket handshake + "
                   "'started', and its final result after the end (default 60)")
    p.add_argument("--api-key", default=os.environ.get("S4D_API_KEY"),
                   help="API key, sent as 'Authorization: Bearer KEY' (default: env S4D_API_KEY)")
    p.add_argument("--ca-file", default=None,
                   help="PEM CA certificate(s) to verify an https/wss server (self-signed)")


def _scale_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=float, default=None,
                   help="multiply the file's samples by this before sending, to get the model's "
                   "input units (`input_units` in GET /v1/models/NAME): e.g. 0.001 for a CSV/NPY "
                   "ECG in microvolts, 32.768 for a 16-bit WAV holding microvolts (16-bit PCM "
                   "reads as value / 32768). Default: send the samples as the file reads")


def _client_kwargs(args: argparse.Namespace) -> dict:
    return {"timeout": args.timeout, "api_key": args.api_key, "ca_file": args.ca_file}


def _session_options(args: argparse.Namespace) -> dict:
    """--timeout for a stream (the handshake + `started`, and the final after the end) and
    --max-reconnects."""
    return {"open_timeout": args.timeout, "end_timeout": args.timeout,
            "max_reconnects": args.max_reconnects}


def run_predict(args: argparse.Namespace) -> int:
    from .client import S4DClient
    from .errors import S4DError

    status = 0
    with S4DClient(args.url, **_client_kwargs(args)) as client:
        for path in args.files:
            try:
                (pred,) = client.predict(args.model, path, per_step=args.per_step,
                                         scale=args.scale)
                out = {"file": path, "model": args.model, **pred.to_dict()}
                print(json.dumps(out), flush=True)
            except S4DError as exc:
                status = 1
                err = {"code": exc.code, "message": exc.message, "status": exc.status}
                print(json.dumps({"file": path, "model": args.model, "error": err}), flush=True)
            except (OSError, ValueError) as exc:
                status = 1
                err = {"code": "bad_file", "message": str(exc), "status": None}
                print(json.dumps({"file": path, "model": args.model, "error": err}), flush=True)
    return status


def _top(msg: dict, k: int = 3) -> str:
    probs = sorted((msg.get("probabilities") or {}).items(), key=lambda kv: -kv[1])[:k]
    return "  ".join(f"{c}={p:.3f}" for c, p in probs)


def _events_arg(value: str):
    if value.strip().lower() in ("off", "false", "no"):
        return False
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--events: 'off' or a JSON object ({exc})") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("--events: 'off' or a JSON object")
    return obj


def _event_line(msg: dict, rate: int | None) -> str:
    off = int(msg.get("offset", 0))
    t = f"{off / rate:8.3f}s" if rate else f"{off:>9d}"
    return f"event  {t}  {str(msg.get('label')):>10s}  p={float(msg.get('probability', 0)):.3f}"


def _line(msg: dict, rate: int | None) -> str:
    off = int(msg.get("offset", 0))
    t = f"{off / rate:8.3f}s" if rate else f"{off:>9d}"
    lat = msg.get("latency_ms")
    lat_s = f"  {lat:6.1f} ms" if isinstance(lat, (int, float)) else ""
    seg = "  [segment end]" if msg.get("segment_end") else ""
    return f"{msg.get('type', ''):6s} {t}  {str(msg.get('label')):>10s}  {_top(msg)}{lat_s}{seg}"


async def _stream(args: argparse.Namespace) -> int:
    from .client import AsyncS4DClient
    from .errors import S4DError

    live = None
    console = None
    if not args.json and sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.live import Live

            console = Console()
            live = Live(console=console, refresh_per_second=20, transient=True)
        except ImportError:
            live = None
    async with AsyncS4DClient(args.url, **_client_kwargs(args)) as client:
        try:
            meta = await client.model(args.model)
            rate = meta.get("sample_rate")
            if live is not None:
                live.start()
            final = None

            def on_event(msg: dict) -> None:
                if args.json:
                    print(json.dumps(msg), flush=True)
                elif live is not None:
                    live.console.print(_event_line(msg, rate))
                else:
                    print(_event_line(msg, rate), flush=True)

            if args.file == "-":
                source = _live_source(client, args, on_event)
            else:
                source = client.stream_file(
                    args.model,
                    args.file,
                    realtime=args.realtime,
                    chunk_ms=args.chunk_ms,
                    emit_every=args.emit_every,
                    encoding=args.encoding,
                    scale=args.scale,
                    events=args.events,
                    on_event=on_event,
                    **_session_options(args),
                )
            async for msg in source:
                if msg.get("type") == "final":
                    final = msg
                    continue
                if args.json:
                    print(json.dumps(msg), flush=True)
                elif live is not None:
                    from rich.text import Text

                    live.update(Text(_line(msg, rate)))
                else:
                    print(_line(msg, rate), flush=True)
            if live is not None:
                live.stop()
                live = None
            if final is not None:
                if args.json:
                    print(json.dumps(final), flush=True)
                else:
                    print(_line(final, rate), flush=True)
            return 0
        except S4DError as exc:
            err = {"code": exc.code, "message": exc.message, "status": exc.status}
            if args.json:
                print(json.dumps({"type": "error", **err}), flush=True)
            else:
                print(f"s4d stream: {exc}", file=sys.stderr)
            return 1
        except (OSError, ValueError) as exc:
            print(f"s4d stream: {exc}", file=sys.stderr)
            return 1
        finally:
            if live is not None:
                live.stop()


def _live_source(client, args: argparse.Namespace, on_event):
    """Results of a live stream from stdin; Ctrl-C ends the input (not the program): what was
    read is sent, the stream ends and its final result is printed."""
    if sys.stdin.isatty():
        raise ValueError("FILE '-' reads raw PCM from stdin: pipe it in, e.g. "
                         "arecord -q -t raw -f S16_LE -r 16000 -c 1 | s4d stream -")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
        loop.add_signal_handler(signal.SIGINT, stop.set)

    def on_trailing(n: int) -> None:
        print(f"s4d stream: the last {n} bytes of stdin were not a whole sample frame; "
              "not sent", file=sys.stderr)

    return client.stream_live(
        # the unbuffered stdin: its reads return what has arrived, and a read still waiting
        # at exit holds no lock of the interpreter's (a buffered one aborts the shutdown)
        args.model, sys.stdin.buffer.raw, rate=args.input_rate, channels=args.input_channels,
        input_encoding=args.input_encoding, chunk_ms=args.chunk_ms, scale=args.scale,
        stop=stop, on_trailing=on_trailing, emit_every=args.emit_every, events=args.events,
        on_event=on_event, **_session_options(args),
    )


def run_stream(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_stream(args))
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s4d-client")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
