"""Seeded robustness test of the Python client (clients/) against MISBEHAVING servers.

Real servers on 127.0.0.1, run on an event loop in a thread of this process:
- `FakeStream`: a `websockets` server that speaks the stream protocol of server/PROTOCOL.md
  (start / started / binary samples / result every frame / reset / end / final, resume by
  session_id + offset with duplicates skipped; no `stored`) and also answers the model
  metadata GET that `s4d stream` makes first. The model name in the URL picks the case: at one
  point of a session (the reply to `start`, right after `started`, after the k-th result, at
  `reset`, at `end`), on the first connection or on every one, it misbehaves: malformed JSON,
  JSON that is not an object, unknown types, `started` / `result` / `final` / `reset` with
  missing or mistyped fields, binary frames, `error` without a code, without a close or before
  a resumable drain, unusual close codes (1000 without a final, 1001, 1003, 1008, 1011, 1012,
  1013, 3000, 4000-4999), a TCP abort (no close frame), a hang, a stall of its reads
  (backpressure) for a while or for good, no `final`, two finals. Its final carries a CRC of
  every sample it kept, so a resumed stream is checked byte for byte.
- `FakeHttp`: an `http.server` in a thread, answering REST calls (and WebSocket handshakes)
  with scripted raw HTTP: 4xx/5xx with JSON, HTML, empty or non-UTF-8 bodies, 200 with bodies
  that are not JSON or not the documented shape, wrong content types, truncated bodies,
  broken gzip, a TCP reset, a hang, a huge body, redirects (and a redirect loop for the
  WebSocket handshake), garbage instead of HTTP.

Well-behaved cases are mixed in (and every fault that a client should survive - an unknown
message type, a binary frame, a resumable close once, a stall - must end well). The cases are
drawn from a fixed seed (printed with every failure); each runs through one of the public
entry points: `AsyncStreamSession` (open / send / reset / end, with `results()` read beside
it), the sync client's `stream()` session and `stream_array()` / `stream_file()` helpers, its
REST calls (`predict` with arrays and files, `models`, `model`, `health`), and the CLI
(`s4d stream` / `s4d predict` as a subprocess with `--url` pointed at the fake server).

Invariants, for every case: the call returns the correct result (the final covers every
sample sent, CRC and probabilities as the fake computed them) or raises `S4DError` with a
non-empty string code and a string message - never a raw KeyError / TypeError /
AttributeError / ValueError / JSONDecodeError / TimeoutError or a websockets / httpx
exception - within a bounded time (the library's own timeouts, set small here; the test's
bound is generous on top); a stream that keeps losing its connection without progress stops
after `max_reconnects` reconnects; the CLI exits non-zero with one human-readable line and no
traceback on every fault.

About 300 cases, ~75 s on 2 busy cores (the slowest case ~4 s):
    .venv/bin/python -m pytest tests/test_client_fuzz.py -q
Another seed: S4D_CLIENT_FUZZ_SEED=N (the default is fixed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients import AsyncS4DClient, S4DClient, S4DError

ROOT = Path(__file__).resolve().parents[1]

SEED = int(os.environ.get("S4D_CLIENT_FUZZ_SEED", "20251128"))
RATE = 8000
FRAME = 64
CLASSES = ["a", "b", "c"]
OPEN_T = 1.0  # open_timeout of every session
END_T = 1.5  # end(timeout) / the helpers' end_timeout
RESET_T = 1.0
HTTP_T = 1.5  # the REST client's timeout
MAX_RECONNECTS = 3
CLI_MAX_RECONNECTS = 12  # the library's default, which the CLI keeps
BOUND = 12.0  # one case's client calls, in process: slower than this is a hang
CLI_BOUND = 40.0  # one CLI run (a Python start-up included)
HANG_S = 30.0  # how long a hanging fake server waits (the client gives up long before)
DROP = object()  # a field left out of a message


# ---------------------------------------------------------------------------- the oracle
def probs_at(offset: int) -> dict[str, float]:
    p = [offset % 7 + 1, offset % 5 + 1, offset % 3 + 1]
    return {c: v / sum(p) for c, v in zip(CLASSES, p, strict=True)}


def label_at(offset: int) -> str:
    p = probs_at(offset)
    return max(CLASSES, key=lambda c: p[c])


def result_msg(kind: str, sid: str, offset: int, **extra: Any) -> dict:
    return {"type": kind, "session_id": sid, "offset": offset, "label": label_at(offset),
            "probabilities": probs_at(offset), "latency_ms": 0.5, **extra}


def dumps(obj: Any) -> str:
    """JSON as Python writes it: NaN / Infinity tokens for non-finite floats."""
    return json.dumps(obj)


def patched(msg: dict, **fields: Any) -> dict:
    out = dict(msg)
    for k, v in fields.items():
        if v is DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------- server loop
class LoopThread:
    """An asyncio loop in a daemon thread: the fake servers run there, apart from the client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="fake-servers")
        self.thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# ---------------------------------------------------------------------------- WebSocket fake
@dataclass
class Fault:
    """What a FakeStream case does wrong, and when."""

    when: str  # start | started | result | reset | end | never
    action: tuple  # see FakeStream._misbehave
    at: int = 1  # "result": after the at-th result of the connection
    repeat: bool = False  # on every connection (else on the first only)
    expect: str = "any"  # ok | error | any
    codes: tuple = ()  # the S4DError codes allowed (empty: any)


@dataclass
class SessionState:
    received: int = 0  # samples kept
    consumed: int = 0  # samples reported by the last result
    crc: int = 0


@dataclass
class StreamCase:
    name: str
    fault: Fault
    frame: int = FRAME
    meta: Any = None  # the metadata GET: a dict (200 JSON) or (status, content type, body)
    connections: int = 0
    starts: list = field(default_factory=list)
    sessions: dict = field(default_factory=dict)


class FakeStream:
    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.cases: dict[str, StreamCase] = {}
        self.server = lt.run(self._start())
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> Any:
        from websockets.asyncio.server import serve

        # max_queue=None: a closing handler reads no more, and with a bounded queue the
        # library would stop reading the socket, missing the client's closing frame
        return await serve(self._handler, "127.0.0.1", 0, process_request=self._http,
                           ping_interval=None, compression=None, max_size=2**24,
                           max_queue=None, close_timeout=1)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close(close_connections=True)
            await asyncio.wait_for(self.server.wait_closed(), 5)

        try:
            self.lt.run(stop())
        except Exception:  # noqa: BLE001 - teardown
            pass

    def add(self, case: StreamCase) -> str:
        self.cases[case.name] = case
        return case.name

    def _case(self, path: str) -> StreamCase | None:
        parts = path.split("?")[0].strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "v1" and parts[1] == "models":
            return self.cases.get(parts[2])
        return None

    async def _http(self, connection: Any, request: Any) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        case = self._case(request.path)
        meta: Any = case.meta if case is not None else None
        if case is not None and meta is None:
            meta = {"name": case.name, "sample_rate": RATE, "input_channels": 1,
                    "classes": CLASSES, "frame_size": case.frame, "streamable": True}
        if meta is None:
            status, ctype, body = 404, "application/json", dumps(
                {"error": {"code": "unknown_model", "message": "no such model"}}).encode()
        elif isinstance(meta, dict):
            status, ctype, body = 200, "application/json", dumps(meta).encode()
        elif meta == "hang":
            await asyncio.sleep(HANG_S)
            status, ctype, body = 500, "text/plain", b"late"
        else:
            status, ctype, body = meta
        headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))),
                           ("Connection", "close")])
        return Response(status, http.HTTPStatus(status).phrase if status in
                        http.HTTPStatus._value2member_map_ else "Odd", headers, body)

    async def _handler(self, ws: Any) -> None:
        case = self._case(ws.request.path)
        if case is None:
            await ws.close(1008, "unknown case")
            return
        conn = case.connections
        case.connections += 1
        f = case.fault
        faulty = f.repeat or conn == 0
        try:
            await self._serve(ws, case, f if faulty else None)
        except Exception:  # noqa: BLE001 - the client went away mid-script
            pass

    async def _misbehave(self, ws: Any, action: tuple, case: StreamCase,
                         sid: str, st: SessionState) -> str:
        """Do `action`; "continue" (serve on), "stop" (return: close 1000) or "done"."""
        kind = action[0]
        if kind == "text":  # ("text", payload, then)
            await ws.send(action[1])
            return action[2] if len(action) > 2 else "continue"
        if kind == "binary":
            await ws.send(b"\x00\xff\x10\x80")
            return "continue"
        if kind == "close":  # ("close", code)
            await ws.close(action[1], "fault")
            return "done"
        if kind == "abort":
            ws.transport.abort()
            return "done"
        if kind == "hang":
            await asyncio.wait_for(ws.wait_closed(), HANG_S)
            return "done"
        if kind == "stall":  # ("stall", seconds): stop reading the socket for a while
            ws.transport.pause_reading()
            if action[1] is None:
                await asyncio.wait_for(ws.wait_closed(), HANG_S)
                return "done"
            await asyncio.sleep(action[1])
            ws.transport.resume_reading()
            return "continue"
        if kind == "error":  # ("error", message dict, close code or None)
            await ws.send(dumps({"type": "error", **action[1]}))
            if action[2] is None:
                await asyncio.wait_for(ws.wait_closed(), HANG_S)
            else:
                await ws.close(action[2], "error")
            return "done"
        if kind == "final_twice":
            await ws.send(dumps(result_msg("final", sid, st.received, checksum=st.crc)))
            await ws.send(dumps(result_msg("final", sid, st.received + 1000, checksum=0)))
            await ws.close(1000)
            return "done"
        if kind == "final_hold":  # a final before any end, the connection kept open
            await ws.send(dumps(result_msg("final", sid, st.received, checksum=st.crc)))
            await asyncio.wait_for(ws.wait_closed(), HANG_S)  # reading (and dropping) on
            return "done"
        if kind == "final_then":  # ("final_then", message or None, close code)
            await ws.send(dumps(result_msg("final", sid, st.received, checksum=st.crc)))
            if action[1] is not None:
                await ws.send(dumps(action[1]))
            await ws.close(action[2])
            return "done"
        if kind == "bad_final":  # ("bad_final", fields)
            await ws.send(dumps(patched(result_msg("final", sid, st.received, checksum=st.crc),
                                        **action[1])))
            await ws.close(1000)
            return "done"
        if kind == "bad_result":  # ("bad_result", fields): an extra result message
            await ws.send(dumps(patched(result_msg("result", sid, st.consumed), **action[1])))
            return "continue"
        if kind == "bad_reset":  # ("bad_reset", fields): the reply to reset
            await ws.send(dumps(patched({"type": "reset", "offset": st.received}, **action[1])))
            return "continue"
        raise AssertionError(action)

    async def _serve(self, ws: Any, case: StreamCase, f: Fault | None) -> None:
        raw = await asyncio.wait_for(ws.recv(), 5)
        start = json.loads(raw)
        case.starts.append(start)
        resume = "session_id" in start
        sid = start.get("session_id") or f"sid-{case.name}"
        st = case.sessions.setdefault(sid, SessionState())
        if f is not None and f.when == "start":
            await self._misbehave(ws, f.action, case, sid, st)
            return
        offset = int(start.get("offset", 0)) if resume else 0
        if offset > st.received:
            await ws.send(dumps({"type": "error", "code": "offset_gap", "message": "gap"}))
            await ws.close(1008)
            return
        skip = 2 * (st.received - offset)
        started = {"type": "started", "session_id": sid, "offset": st.received,
                   "frame_size": case.frame, "sample_rate": RATE, "channels": 1,
                   "classes": CLASSES, "events": False}
        if f is not None and f.when == "started" and f.action[0] == "started":
            started = patched(started, **f.action[1])
            f = dataclasses.replace(f, when="never")
        await ws.send(dumps(started))
        if f is not None and f.when == "started":
            if await self._misbehave(ws, f.action, case, sid, st) != "continue":
                return
        emit_every = start.get("emit_every", case.frame) or 0
        results = 0
        async for msg in ws:
            if isinstance(msg, bytes):
                if skip:
                    cut = min(skip, len(msg))
                    msg, skip = msg[cut:], skip - cut
                st.crc = zlib.crc32(msg, st.crc)
                st.received += len(msg) // 2
                while emit_every and st.received - st.consumed >= emit_every:
                    st.consumed += emit_every
                    await ws.send(dumps(result_msg("result", sid, st.consumed)))
                    results += 1
                    if f is not None and f.when == "result" and results == f.at:
                        if await self._misbehave(ws, f.action, case, sid, st) != "continue":
                            return
                continue
            m = json.loads(msg)
            if m.get("type") == "reset":
                if f is not None and f.when == "reset":
                    if await self._misbehave(ws, f.action, case, sid, st) != "continue":
                        return
                    continue
                st.consumed = st.received
                await ws.send(dumps(result_msg("result", sid, st.received, segment_end=True)))
                await ws.send(dumps({"type": "reset", "offset": st.received}))
            elif m.get("type") == "end":
                if f is not None and f.when == "end":
                    if await self._misbehave(ws, f.action, case, sid, st) != "continue":
                        return
                await ws.send(dumps(result_msg("final", sid, st.received, checksum=st.crc)))
                await ws.close(1000)
                return


# ---------------------------------------------------------------------------- HTTP fake
@dataclass
class HttpCase:
    """Per route (predict, meta, models, health, stream): what the fake answers."""

    name: str
    routes: dict
    hits: int = 0


def _good_predict(body: bytes, ctype: str) -> list[dict]:
    if ctype.startswith("application/json"):
        inputs = json.loads(body)["inputs"]
        lengths = [len(x) for x in inputs]
    else:  # multipart: one prediction per file part; lengths unknown here
        lengths = [1000] * max(1, body.count(b'name="file"'))
    return [{"label": label_at(n), "probabilities": probs_at(n), "num_samples": n}
            for n in lengths]


class FakeHttp:
    def __init__(self) -> None:
        self.cases: dict[str, HttpCase] = {}
        self.release = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self)

            def do_POST(self) -> None:  # noqa: N802
                fake._handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, case: HttpCase) -> str:
        self.cases[case.name] = case
        return f"http://127.0.0.1:{self.port}/{case.name}"

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        parts = h.path.split("?")[0].strip("/").split("/")
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else b""
        case = self.cases.get(parts[0])
        rest = parts[1:]
        if h.headers.get("Upgrade", "").lower() == "websocket":
            route = "stream"
        elif rest == ["healthz"]:
            route = "health"
        elif rest == ["v1", "models"]:
            route = "models"
        elif len(rest) == 3 and rest[:2] == ["v1", "models"]:
            route = "meta"
        elif len(rest) == 4 and rest[3] == "predict":
            route = "predict"
        else:
            route = "?"
        spec = case.routes.get(route, ("good",)) if case is not None else ("status", 404)
        if case is not None:
            case.hits += 1
        self._answer(h, spec, route, rest, body)

    def _answer(self, h: Any, spec: tuple, route: str, rest: list, body: bytes) -> None:
        kind = spec[0]
        w = h.wfile

        def respond(status: int, ctype: str | None, payload: bytes,
                    extra: tuple = ()) -> None:
            head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else 'Odd'}"]
            if ctype:
                head.append(f"Content-Type: {ctype}")
            head += [f"Content-Length: {len(payload)}", "Connection: close", *extra]
            w.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
            w.flush()
            h.close_connection = True

        if kind in ("good", "trickle"):
            if route == "predict":
                preds = _good_predict(body, h.headers.get("Content-Type", ""))
                payload = {"model": rest[2], "predictions": preds}
            elif route == "meta":
                payload = {"name": rest[2], "sample_rate": RATE, "input_channels": 1,
                           "classes": CLASSES, "frame_size": FRAME, "streamable": True}
            elif route == "models":
                payload = {"models": [{"name": "m", "sample_rate": RATE, "input_channels": 1,
                                       "classes": CLASSES, "frame_size": FRAME}]}
            elif route == "health":
                payload = {"status": "ok"}
            else:
                respond(426, "text/plain", b"upgrade refused")
                return
            if kind == "good":
                respond(200, "application/json", dumps(payload).encode())
                return
            # ("trickle", seconds): the good answer, its body one byte at a time spread over
            # `seconds` (every byte well inside any per-read timeout)
            data = dumps(payload).encode()
            gap = spec[1] / len(data)
            w.write((f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode())
            h.close_connection = True
            try:
                for i in range(len(data)):
                    w.write(data[i : i + 1])
                    w.flush()
                    if self.release.wait(gap):
                        return
            except OSError:  # the client gave up
                pass
        elif kind == "json":  # ("json", status, obj[, content type])
            respond(spec[1], spec[3] if len(spec) > 3 else "application/json",
                    dumps(spec[2]).encode())
        elif kind == "body":  # ("body", status, content type, bytes[, extra headers])
            respond(spec[1], spec[2], spec[3], spec[4] if len(spec) > 4 else ())
        elif kind == "status":
            respond(spec[1], None, b"")
        elif kind == "redirect":  # ("redirect", status, location)
            respond(spec[1], "text/html", b"<a>moved</a>", (f"Location: {spec[2]}",))
        elif kind == "truncate":  # ("truncate", status, full body, bytes sent)
            head = (f"HTTP/1.1 {spec[1]} OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(spec[2])}\r\nConnection: close\r\n\r\n")
            w.write(head.encode() + spec[2][: spec[3]])
            w.flush()
            h.close_connection = True
        elif kind == "raw":  # ("raw", bytes): anything, then close
            w.write(spec[1])
            w.flush()
            h.close_connection = True
        elif kind == "gzip_garbage":
            respond(200, "application/json", b"\x1f\x8b\x08\x00garbage" * 4,
                    ("Content-Encoding: gzip",))
        elif kind == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
        elif kind == "hang":
            self.release.wait(HANG_S)
            h.close_connection = True
        elif kind == "hang_body":  # the head, then nothing
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{\"predictions\"")
            w.flush()
            self.release.wait(HANG_S)
            h.close_connection = True
        else:
            raise AssertionError(spec)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture(scope="module")
def fake_stream(loop_thread):
    fs = FakeStream(loop_thread)
    yield fs
    fs.close()


@pytest.fixture(scope="module")
def fake_http():
    fh = FakeHttp()
    yield fh
    fh.close()


# ---------------------------------------------------------------------------- checks
def check_error(exc: BaseException, ctx: str, codes: tuple = ()) -> None:
    assert isinstance(exc, S4DError), f"{ctx}: raised {type(exc).__module__}.{type(exc).__name__}: {exc!r}"
    assert isinstance(exc.code, str) and exc.code, f"{ctx}: unreadable code {exc.code!r}"
    assert isinstance(exc.message, str), f"{ctx}: message {exc.message!r}"
    assert "object at 0x" not in str(exc), f"{ctx}: a repr in the message: {exc}"
    if codes:
        assert exc.code in codes, f"{ctx}: code {exc.code!r}, expected one of {codes}: {exc}"


def check_final(final: Any, sent: bytes, ctx: str) -> None:
    n = len(sent) // 2
    assert isinstance(final, dict) and final.get("type") == "final", f"{ctx}: final {final!r}"
    assert final.get("offset") == n, f"{ctx}: final offset {final.get('offset')} != {n} sent"
    assert final.get("checksum") == zlib.crc32(sent), f"{ctx}: the server kept other samples"
    assert final.get("probabilities") == probs_at(n) and final.get("label") == label_at(n), ctx


def check_results(msgs: list, n: int, ctx: str) -> None:
    last = -1
    for m in msgs:
        assert isinstance(m, dict) and m.get("type") in ("result", "final"), f"{ctx}: {m!r}"
        off = m.get("offset")
        assert isinstance(off, int) and not isinstance(off, bool), f"{ctx}: offset {off!r}"
        assert 0 <= off <= n, f"{ctx}: offset {off} outside 0..{n}"
        assert off >= last, f"{ctx}: offsets go back: {last} -> {off}"
        last = off
        probs = m.get("probabilities")
        if probs is not None:
            assert isinstance(probs, dict), f"{ctx}: probabilities {probs!r}"
            assert all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in probs.values()), f"{ctx}: probabilities {probs!r}"


def ctx_of(case: Any) -> str:
    return f"[seed {SEED}] {case}"


# ---------------------------------------------------------------------------- stream faults
NAN, INF = float("nan"), float("inf")
ERR = ("bad_response",)
RESUMABLE_CLOSES = [1001, 1012, 3000, 4000, 4001, 4500, 4999]
FINAL_CLOSES = [1003, 1008, 1009, 1011, 1013]
BAD_STARTED = [
    {"frame_size": 0}, {"frame_size": -64}, {"frame_size": "64"}, {"frame_size": 1.5},
    {"frame_size": None}, {"frame_size": True}, {"frame_size": DROP},
    {"classes": "abc"}, {"classes": None}, {"classes": [1, 2, 3]}, {"classes": {"a": 1}},
    {"classes": DROP},
    {"session_id": None}, {"session_id": 7}, {"session_id": ""}, {"session_id": DROP},
    {"offset": -1}, {"offset": "0"}, {"offset": 0.5}, {"offset": NAN}, {"offset": INF},
    {"offset": None}, {"offset": DROP}, {"sample_rate": "8000"}, {"channels": [1]},
]
GOOD_STARTED = [{"extra": [1, {"x": None}]}, {"snapshots": True}, {"events": {"threshold": 0.5}},
                {"message": "hi"}]
BAD_RESULTS = [
    {"offset": None}, {"offset": "64"}, {"offset": NAN}, {"offset": INF}, {"offset": -64},
    {"offset": 1.5}, {"offset": 10**30}, {"offset": DROP}, {"offset": True},
    {"probabilities": "high"}, {"probabilities": [0.2, 0.8]}, {"probabilities": {"a": "x"}},
    {"probabilities": {"a": None}}, {"probabilities": {"a": True}}, {"probabilities": {"a": [1]}},
    {"probabilities": DROP}, {"label": 5}, {"label": ["a"]}, {"type": "final", "offset": "x"},
]
JUNK_FATAL = ["{not json", "", "[1, 2]", "null", "42", '"result"', "{'type': 'result'}",
              '{"type": "result"', "NaN"]
JUNK_IGNORED = ['{"type": "hello"}', '{"no_type": 1}', '{"type": null}', '{"type": 5}',
                '{"type": "event", "label": "a", "offset": 10, "probability": 0.9}',
                '{"type": "stored", "session_id": "x", "offset": 0}']
BAD_EVENTS = ['{"type": "event"}', '{"type": "event", "label": 5, "offset": 1, "probability": 1}',
              '{"type": "event", "label": "a", "offset": "x", "probability": 0.5}',
              '{"type": "event", "label": "a", "offset": 1, "probability": "p"}',
              '{"type": "stored", "offset": "x"}', '{"type": "reset", "offset": null}']


def stream_faults() -> list[tuple[str, Fault]]:
    """Every fault of the catalogue, named."""
    F = Fault
    out: list[tuple[str, Fault]] = []
    # ---- the reply to start
    for i, p in enumerate(JUNK_FATAL + ['{"type": "hello"}', '{"session_id": "x"}',
                                        '{"type": "started"}', '{"type": "result"}']):
        out.append((f"start-text{i}", F("start", ("text", p), expect="error",
                                        codes=("bad_response", "timeout"))))
    out.append(("start-binary", F("start", ("binary",), expect="error",
                                  codes=("bad_response", "timeout"))))
    out.append(("start-hang", F("start", ("hang",), expect="error", codes=("timeout",))))
    out.append(("start-hang-always", F("start", ("hang",), repeat=True, expect="error",
                                       codes=("timeout",))))
    out.append(("start-stall-always", F("start", ("stall", None), repeat=True, expect="error",
                                        codes=("timeout",))))
    for code in (1000, 1011, 4000):
        out.append((f"start-close{code}", F("start", ("close", code), repeat=True,
                                            expect="error")))
    out.append(("start-abort", F("start", ("abort",), expect="ok")))
    out.append(("start-abort-always", F("start", ("abort",), repeat=True, expect="error")))
    out.append(("start-error-nocode", F("start", ("error", {}, 1008), expect="error")))
    out.append(("start-error-oddcode", F("start", ("error", {"code": None, "message": 5}, 1011),
                                         expect="error")))
    out.append(("start-error-unknown_model", F(
        "start", ("error", {"code": "unknown_model", "message": "no"}, 1008), expect="error",
        codes=("unknown_model",))))
    out.append(("start-error-noclose", F(
        "start", ("error", {"code": "internal", "message": "x"}, None), expect="error",
        codes=("internal",))))
    out.append(("start-busy-once", F(
        "start", ("error", {"code": "server_busy", "message": "x"}, 1013), expect="ok")))
    # ---- started
    for i, fields in enumerate(BAD_STARTED):
        out.append((f"started-bad{i}", F("started", ("started", fields), expect="error",
                                         codes=ERR)))
    for i, fields in enumerate(GOOD_STARTED):
        out.append((f"started-good{i}", F("started", ("started", fields), expect="ok")))
    out.append(("started-close1000", F("started", ("close", 1000), expect="error")))
    out.append(("started-close1011", F("started", ("close", 1011), expect="error")))
    for code in (1001, 4000, 4999):
        out.append((f"started-close{code}-once", F("started", ("close", code), expect="ok")))
        out.append((f"started-close{code}-always", F("started", ("close", code), repeat=True,
                                                     expect="error")))
    out.append(("started-abort-once", F("started", ("abort",), expect="ok")))
    out.append(("started-abort-always", F("started", ("abort",), repeat=True, expect="error")))
    out.append(("started-hang", F("started", ("hang",), expect="error", codes=("timeout",))))
    # ---- after the k-th result
    for i, p in enumerate(JUNK_FATAL):
        out.append((f"result-text{i}", F("result", ("text", p), expect="error", codes=ERR)))
    for i, p in enumerate(JUNK_IGNORED):
        out.append((f"result-ignored{i}", F("result", ("text", p), expect="ok")))
    for i, p in enumerate(BAD_EVENTS):
        out.append((f"result-badmsg{i}", F("result", ("text", p), expect="error", codes=ERR)))
    out.append(("result-binary", F("result", ("binary",), expect="ok")))
    for i, fields in enumerate(BAD_RESULTS):
        out.append((f"result-bad{i}", F("result", ("bad_result", fields), expect="error",
                                        codes=ERR)))
    out.append(("result-nullprobs", F("result", ("bad_result", {"label": None,
                                                               "probabilities": None}),
                                      expect="ok")))
    out.append(("result-extra", F("result", ("bad_result", {"extra": {"x": [1]}}), expect="ok")))
    for code in RESUMABLE_CLOSES:
        out.append((f"result-close{code}-once", F("result", ("close", code), expect="ok")))
    for code in (1001, 4000):
        out.append((f"result-close{code}-always", F("result", ("close", code), repeat=True)))
    out.append(("result-abort-once", F("result", ("abort",), expect="ok")))
    out.append(("result-abort-always", F("result", ("abort",), repeat=True)))
    out.append(("result-close1000", F("result", ("close", 1000), expect="error")))
    for code in FINAL_CLOSES:
        out.append((f"result-close{code}", F("result", ("close", code), expect="error")))
    out.append(("result-error-nocode", F("result", ("error", {}, 1008), expect="error")))
    out.append(("result-error-intcode", F("result", ("error", {"code": 3, "message": None},
                                                     1011), expect="error")))
    out.append(("result-error-internal", F(
        "result", ("error", {"code": "internal", "message": "boom"}, 1011), expect="error",
        codes=("internal",))))
    out.append(("result-error-noclose", F(
        "result", ("error", {"code": "slow_consumer", "message": "x"}, None), expect="error",
        codes=("slow_consumer",))))
    out.append(("result-drain-resume", F(
        "result", ("error", {"code": "shutting_down", "resume": True, "offset": 0,
                             "message": "bye"}, 1001), expect="ok")))
    out.append(("result-hang", F("result", ("hang",), expect="error", codes=("timeout",))))
    out.append(("result-stall", F("result", ("stall", 2.0), expect="ok")))
    # a server that stops reading for good: send() waits until the keepalive gives up on it
    # (ping_timeout, short here), then the stream resumes: from too far back (offset_gap)
    out.append(("result-stall-forever", F("result", ("stall", None), expect="error",
                                          codes=("offset_gap", "connection_lost"))))
    # ---- reset
    out.append(("reset-hang", F("reset", ("hang",), expect="error", codes=("timeout",))))
    out.append(("reset-noreply", F("reset", ("text", '{"type": "hello"}'), expect="error",
                                   codes=("timeout",))))
    for i, fields in enumerate([{"offset": "x"}, {"offset": None}, {"offset": -3},
                                {"offset": DROP}, {"offset": 10**30}]):
        out.append((f"reset-bad{i}", F("reset", ("bad_reset", fields), expect="error",
                                       codes=ERR)))
    out.append(("reset-close4000", F("reset", ("close", 4000), expect="error")))
    # ---- end
    out.append(("end-close1000", F("end", ("close", 1000), expect="error")))
    out.append(("end-hang", F("end", ("hang",), expect="error", codes=("timeout",))))
    out.append(("end-stall", F("end", ("stall", None), expect="error", codes=("timeout",))))
    out.append(("end-final-twice", F("end", ("final_twice",), expect="ok")))
    out.append(("end-final-then-drain", F(
        "end", ("final_then", {"type": "error", "code": "shutting_down", "message": "x"}, 1001),
        expect="ok")))
    out.append(("end-final-then-1011", F("end", ("final_then", None, 1011), expect="ok")))
    for i, fields in enumerate(BAD_RESULTS[:10]):
        out.append((f"end-badfinal{i}", F("end", ("bad_final", fields), expect="error",
                                          codes=ERR)))
    out.append(("end-close4000-once", F("end", ("close", 4000), expect="ok")))
    out.append(("end-close4000-always", F("end", ("close", 4000), repeat=True, expect="error")))
    out.append(("end-abort-always", F("end", ("abort",), repeat=True, expect="error")))
    out.append(("end-drain-resume", F(
        "end", ("error", {"code": "shutting_down", "resume": True, "message": "x"}, 1001),
        expect="ok")))
    out.append(("end-error-internal", F(
        "end", ("error", {"code": "internal", "message": "boom"}, 1011), expect="error",
        codes=("internal",))))
    return out


# ---------------------------------------------------------------------------- plans, drivers
@dataclass
class Plan:
    chunks: list  # int16 arrays
    reset_at: int | None = None
    reconnect: bool = True
    end_timeout: float = END_T
    keepalive: bool = False  # a short one (else the library's 20 s + 20 s)

    @property
    def data(self) -> np.ndarray:
        return np.concatenate(self.chunks)


def make_plan(rng: random.Random, *, bulk: bool = False, reset: bool = False,
              reconnect: bool = True, keepalive: bool = False) -> Plan:
    if bulk:  # 6 MiB, more than the socket buffers hold: the sender meets backpressure
        sizes = [32768] * 96
    else:
        sizes = [rng.randint(1, 400) for _ in range(rng.randint(3, 10))]
        sizes.append(max(1, 700 - sum(sizes)))  # at least ~10 frames: room for the faults
    g = np.random.default_rng(rng.randrange(2**32))
    chunks = [g.integers(-32768, 32768, size=n, dtype=np.int16) for n in sizes]
    reset_at = rng.randrange(len(chunks) - 1) if reset else None
    # a stalled server holds the final back: the bulk cases wait for it beyond the stall
    return Plan(chunks, reset_at, reconnect, END_T + 4 if bulk else END_T, keepalive)


@dataclass
class Outcome:
    error: BaseException | None = None
    final: Any = None
    results: list = field(default_factory=list)
    results_error: BaseException | None = None  # what results() iteration raised
    failed_call: str = ""  # the call that raised: open, send, reset, end
    max_send_s: float = 0.0  # the longest send() (backpressure)
    session_final: Any = None  # the session's .final attribute afterwards


def run_bounded(fn: Any, bound: float, ctx: str) -> Any:
    """fn() in a daemon thread; AssertionError if it is not done within `bound` seconds."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(bound)
    assert not t.is_alive(), f"{ctx}: still running after {bound} s: a hang"
    if "exc" in box:
        raise box["exc"]
    return box["value"]


def session_kwargs(plan: Plan) -> dict:
    kw = {"open_timeout": OPEN_T, "max_reconnects": MAX_RECONNECTS,
          "reconnect": plan.reconnect}
    if plan.keepalive:
        kw.update(ping_interval=0.5, ping_timeout=1.0)
    return kw


async def drive_async(url: str, model: str, plan: Plan) -> Outcome:
    """AsyncStreamSession: open, send (a reset between), end; results() read beside it."""
    out = Outcome()
    async with AsyncS4DClient(url, timeout=HTTP_T) as c:
        s = c.stream(model, sample_rate=RATE, encoding="pcm_s16le", **session_kwargs(plan))
        try:
            await s.open()
        except Exception as exc:  # noqa: BLE001 - checked by the caller
            out.error, out.failed_call = exc, "open"
            return out

        async def consume() -> None:
            async for m in s.results():
                out.results.append(m)

        consumer = asyncio.ensure_future(consume())
        try:
            for i, chunk in enumerate(plan.chunks):
                out.failed_call = "send"
                t = time.monotonic()
                await s.send(chunk)
                out.max_send_s = max(out.max_send_s, time.monotonic() - t)
                if i == plan.reset_at:
                    out.failed_call = "reset"
                    await s.reset(timeout=RESET_T)
            out.failed_call = "end"
            out.final = await s.end(timeout=plan.end_timeout)
            out.failed_call = ""
        except Exception as exc:  # noqa: BLE001
            out.error = exc
        await s.close()
        try:  # the iterator ends too: after the final, or raising
            await asyncio.wait_for(consumer, 5.0)
        except Exception as exc:  # noqa: BLE001
            out.results_error = exc
        out.session_final = s.final
    return out


def drive_sync_session(url: str, model: str, plan: Plan) -> Outcome:
    out = Outcome()
    with S4DClient(url, timeout=HTTP_T) as c:
        s = c.stream(model, sample_rate=RATE, encoding="pcm_s16le", **session_kwargs(plan))
        try:
            s.open()
            for i, chunk in enumerate(plan.chunks):
                s.send(chunk)
                if i == plan.reset_at:
                    s.reset(timeout=RESET_T)
            out.final = s.end(timeout=plan.end_timeout)
        except Exception as exc:  # noqa: BLE001
            out.error = exc
        s.close()
        if out.error is None:
            try:
                out.results = list(s.results())
            except Exception as exc:  # noqa: BLE001
                out.results_error = exc
        out.session_final = s.final
    return out


def drive_sync_array(url: str, model: str, plan: Plan) -> Outcome:
    out = Outcome()
    x = plan.data.astype(np.float32) / 32768  # exact in pcm_s16le
    with S4DClient(url, timeout=HTTP_T) as c:
        try:
            for m in c.stream_array(model, x, sample_rate=RATE, encoding="pcm_s16le",
                                    chunk_ms=7, end_timeout=plan.end_timeout,
                                    **session_kwargs(plan)):
                out.results.append(m)
        except Exception as exc:  # noqa: BLE001
            out.error = exc
    if out.error is None and out.results:
        out.final = out.results[-1]
    return out


def write_wav(path: Path, data: np.ndarray) -> Path:
    import soundfile as sf

    sf.write(str(path), data, RATE, subtype="PCM_16")
    return path


def drive_sync_file(url: str, model: str, plan: Plan, wav: Path) -> Outcome:
    out = Outcome()
    with S4DClient(url, timeout=HTTP_T) as c:
        try:
            for m in c.stream_file(model, wav, chunk_ms=9, end_timeout=plan.end_timeout,
                                   **session_kwargs(plan)):
                out.results.append(m)
        except Exception as exc:  # noqa: BLE001
            out.error = exc
    if out.error is None and out.results:
        out.final = out.results[-1]
    return out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("S4D_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "s4d_cli", *args], cwd=ROOT, env=env,
                          timeout=CLI_BOUND, capture_output=True, text=True)


def check_cli_failure(r: subprocess.CompletedProcess, ctx: str, json_mode: bool,
                      prefix: str) -> None:
    both = r.stdout + r.stderr
    assert r.returncode not in (0, None), f"{ctx}: exit 0 on a fault\n{both}"
    assert "Traceback" not in both, f"{ctx}: a traceback\n{both}"
    if json_mode:
        last = json.loads(r.stdout.strip().splitlines()[-1])
        err = last.get("error", last)
        assert isinstance(err.get("code"), str) and err["code"], f"{ctx}: {last}"
        assert not r.stderr.strip(), f"{ctx}: stderr besides the JSON error:\n{r.stderr}"
    else:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(prefix), \
            f"{ctx}: not one readable line:\n{r.stderr}"
        assert "object at 0x" not in lines[0], f"{ctx}: {lines[0]}"


def drive_cli_stream(url: str, model: str, wav: Path, json_mode: bool, timeout: float) -> Any:
    args = ["stream", "--url", url, "--model", model, str(wav), "--timeout", str(timeout),
            "--chunk-ms", "11"]
    return run_cli(*args, *(["--json"] if json_mode else []))


# ---------------------------------------------------------------------------- stream cases
DRIVERS = ["async", "sync_session", "sync_array", "sync_file", "cli_json", "cli_text"]
CLI_CASES = {"started-hang", "end-hang", "result-close4000-once", "end-final-twice",
             "result-bad1", "end-badfinal2", "good0"}


@dataclass
class StreamSpec:
    idx: int
    name: str
    fault: Fault | None
    driver: str
    plan_seed: int
    bulk: bool = False
    reset: bool = False
    reconnect: bool = True

    def __str__(self) -> str:
        return (f"stream case {self.idx} {self.name} driver={self.driver} bulk={self.bulk} "
                f"reset={self.reset} reconnect={self.reconnect} fault={self.fault}")


def stream_specs() -> list[StreamSpec]:
    rng = random.Random(SEED)
    specs: list[StreamSpec] = []
    entries: list[tuple[str, Fault | None]] = list(stream_faults())
    entries += [(f"good{i}", None) for i in range(8)]
    cli_left = 16
    for name, f in entries:
        reset_ok = f is None or f.when == "reset" or f.action[0] in ("text", "binary",
                                                                    "bad_result")
        drivers = ["async", "sync_session"] if f is not None and f.when == "reset" else DRIVERS
        if f is not None and (f.repeat and f.when == "start" or f.action == ("stall", None)):
            # the CLI keeps the default max_reconnects (12: ~17 s of backoff) and keepalive
            drivers = [d for d in drivers if not d.startswith("cli")]
        driver = rng.choice(drivers)
        if name in CLI_CASES:  # the CLI's --timeout, resume and duplicate final, for sure
            driver = rng.choice(["cli_json", "cli_text"])
        elif driver.startswith("cli"):
            if cli_left <= 0:
                driver = rng.choice(["async", "sync_session", "sync_array", "sync_file"])
            else:
                cli_left -= 1
        bulk = f is not None and f.action[0] == "stall" and f.when == "result"
        reset = (f is not None and f.when == "reset") or (
            reset_ok and driver in ("async", "sync_session") and rng.random() < 0.3)
        reconnect = driver.startswith("cli") or not (
            f is not None and f.expect == "error" and rng.random() < 0.15)
        specs.append(StreamSpec(len(specs), name, f, driver, rng.randrange(2**32), bulk, reset,
                                reconnect))
    return specs


STREAM_SPECS = stream_specs()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("spec", STREAM_SPECS, ids=lambda s: f"{s.idx}-{s.name}-{s.driver}")
def test_stream_client_against_faulty_server(spec: StreamSpec, fake_stream, tmp_path):
    ctx = ctx_of(spec)
    f = spec.fault or Fault("never", ("none",), expect="ok")
    plan = make_plan(random.Random(spec.plan_seed), bulk=spec.bulk, reset=spec.reset,
                     reconnect=spec.reconnect,
                     keepalive=f.action == ("stall", None) and f.when == "result")
    case = StreamCase(f"c{spec.idx}-{spec.name}", f, frame=8192 if spec.bulk else FRAME)
    model = fake_stream.add(case)
    sent = plan.data.tobytes()
    t0 = time.monotonic()
    if spec.driver.startswith("cli"):
        wav = write_wav(tmp_path / "x.wav", plan.data)
        json_mode = spec.driver == "cli_json"
        r = drive_cli_stream(fake_stream.url, model, wav, json_mode, plan.end_timeout)
        if r.returncode == 0:
            assert f.expect != "error", f"{ctx}: exit 0 on a fault the client must report\n{r.stdout}"
            if json_mode:
                msgs = [json.loads(ln) for ln in r.stdout.splitlines()]
                check_final(msgs[-1], sent, ctx)
                check_results([m for m in msgs if m.get("type") in ("result", "final")],
                              len(sent) // 2, ctx)
            else:
                assert r.stdout.strip().splitlines()[-1].startswith("final"), ctx
        else:
            assert f.expect != "ok", f"{ctx}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
            check_cli_failure(r, ctx, json_mode, "s4d stream: ")
        bound = CLI_BOUND
    else:
        if spec.driver == "async":
            out = run_bounded(lambda: asyncio.run(drive_async(fake_stream.url, model, plan)),
                              BOUND, ctx)
        elif spec.driver == "sync_session":
            out = run_bounded(lambda: drive_sync_session(fake_stream.url, model, plan), BOUND, ctx)
        elif spec.driver == "sync_array":
            out = run_bounded(lambda: drive_sync_array(fake_stream.url, model, plan), BOUND, ctx)
        else:
            wav = write_wav(tmp_path / "x.wav", plan.data)
            out = run_bounded(lambda: drive_sync_file(fake_stream.url, model, plan, wav), BOUND, ctx)
        if out.error is None:
            assert f.expect != "error", f"{ctx}: no error on a fault the client must report: {out.final}"
            check_final(out.final, sent, ctx)
            check_results(out.results, len(sent) // 2, ctx)
            if out.results:
                assert out.results[-1] == out.final, f"{ctx}: results end {out.results[-1]}"
            if out.session_final is not None:
                assert out.session_final == out.final, f"{ctx}: .final {out.session_final}"
            assert out.results_error is None, f"{ctx}: results() raised {out.results_error!r}"
            if spec.driver == "async" and f.action[0] == "stall":  # the stall was felt
                assert out.max_send_s > 1.0, f"{ctx}: no send() waited ({out.max_send_s:.2f} s)"
        else:
            assert f.expect != "ok", f"{ctx}: raised {out.error!r}"
            check_error(out.error, ctx, f.codes)
            check_results([m for m in out.results if m.get("type") == "result"],
                          len(sent) // 2, ctx)
            if out.results_error is not None:
                check_error(out.results_error, ctx + " (results)")
            elif out.failed_call in ("send", "end"):  # never a clean end as if all went well
                assert any(m.get("type") == "final" for m in out.results), \
                    f"{ctx}: {out.failed_call}() raised {out.error!r}, results() ended cleanly"
        bound = BOUND
    elapsed = time.monotonic() - t0
    assert elapsed < bound, f"{ctx}: took {elapsed:.1f} s"
    # a stream that keeps losing its connection stops after max_reconnects in a row
    # (open's retries included); progress (a new acknowledged offset) earns more
    max_reconnects = CLI_MAX_RECONNECTS if spec.driver.startswith("cli") else MAX_RECONNECTS
    if f.repeat and f.when in ("start", "started", "end"):
        assert case.connections <= 1 + max_reconnects, \
            f"{ctx}: {case.connections} connections for max_reconnects={max_reconnects}"
    if not spec.reconnect:
        assert case.connections == 1, f"{ctx}: reconnected with reconnect=False"


def test_cli_max_reconnects_bounds_a_server_that_drops_every_start(fake_stream, tmp_path):
    """`s4d stream --max-reconnects N`: a server that accepts the connection and drops it at
    every start is tried N + 1 times, then one readable line (the default 12 takes ~17 s)."""
    case = StreamCase("cli-max-reconnects", Fault("start", ("abort",), repeat=True,
                                                  expect="error"))
    model = fake_stream.add(case)
    plan = make_plan(random.Random(1), bulk=False, reset=False, reconnect=True, keepalive=False)
    wav = write_wav(tmp_path / "x.wav", plan.data)
    t0 = time.monotonic()
    r = run_cli("stream", "--url", fake_stream.url, "--model", model, str(wav),
                "--max-reconnects", "1")
    check_cli_failure(r, "max-reconnects 1", False, "s4d stream: ")
    assert case.connections == 2, case.connections
    assert time.monotonic() - t0 < 15


# ---------------------------------------------------------------------------- REST cases
def _good_body(n_preds: int = 1, **pred_fields: Any) -> dict:
    preds = [{"label": label_at(1000), "probabilities": probs_at(1000), "num_samples": 1000,
              **pred_fields} for _ in range(n_preds)]
    return {"model": "m", "predictions": preds}


BIG = 8 << 20  # a "huge" body: 8 MiB
REST_FAULTS: list[tuple[str, str, tuple, str, tuple]] = [
    # (name, route, answer, expect, codes)
    ("500-json", "predict", ("json", 500, {"error": {"code": "internal", "message": "boom"}}),
     "error", ("internal",)),
    ("502-html", "predict", ("body", 502, "text/html", b"<html>Bad Gateway</html>"), "error",
     ("http_502",)),
    ("503-empty", "predict", ("status", 503), "error", ("http_503",)),
    ("504-html", "meta", ("body", 504, "text/html", b"<html>timeout</html>"), "error",
     ("http_504",)),
    ("500-oip-error", "predict", ("json", 500, {"error": "oip style"}), "error", ("http_500",)),
    ("404-list", "predict", ("json", 404, [1, 2]), "error", ("http_404",)),
    ("400-code-null", "predict", ("json", 400, {"error": {"code": None, "message": None}}),
     "error", ("http_400",)),
    ("400-code-int", "meta", ("json", 400, {"error": {"code": 7, "message": ["x"]}}), "error",
     ("http_400",)),
    ("500-not-utf8", "predict", ("body", 500, "application/json", b"\xff\xfe\x00{x"), "error",
     ("http_500",)),
    ("401-json", "models", ("json", 401, {"error": {"code": "unauthorized", "message": "key"}}),
     "error", ("unauthorized",)),
    ("200-html", "predict", ("body", 200, "text/html", b"<html>hi</html>"), "error", ERR),
    ("200-empty", "predict", ("body", 200, "application/json", b""), "error", ERR),
    ("200-not-utf8", "predict", ("body", 200, "application/json", b'{"a": "\xff"}'), "error",
     ERR),
    ("200-list", "predict", ("json", 200, [1, 2]), "error", ERR),
    ("200-null", "predict", ("json", 200, None), "error", ERR),
    ("200-no-predictions", "predict", ("json", 200, {"model": "m"}), "error", ERR),
    ("200-predictions-str", "predict", ("json", 200, {"predictions": "x"}), "error", ERR),
    ("200-predictions-ints", "predict", ("json", 200, {"predictions": [1]}), "error", ERR),
    ("200-probs-list", "predict", ("json", 200, _good_body(probabilities=[0.5])), "error", ERR),
    ("200-probs-str", "predict", ("json", 200, _good_body(probabilities={"a": "high"})),
     "error", ERR),
    ("200-probs-null", "predict", ("json", 200, _good_body(probabilities={"a": None})), "error",
     ERR),
    ("200-label-int", "predict", ("json", 200, _good_body(label=3)), "error", ERR),
    ("200-num-samples-str", "predict", ("json", 200, _good_body(num_samples="many")), "error",
     ERR),
    ("200-num-samples-nan", "predict", ("json", 200, _good_body(num_samples=NAN)), "error",
     ERR),
    ("200-num-samples-null", "predict", ("json", 200, _good_body(num_samples=None)), "error",
     ERR),
    ("200-per-step-ragged", "predict", ("json", 200, _good_body(per_step=[[1], [1, 2]])),
     "error", ERR),
    ("200-too-few", "predict", ("json", 200, {"predictions": []}), "error", ERR),
    ("200-text-plain", "predict", ("good-as", "text/plain"), "ok", ()),
    ("200-padded", "predict", ("good-padded",), "ok", ()),
    ("200-huge-junk", "predict", ("body", 200, "application/json", b"x" * BIG), "error", ERR),
    ("truncated", "predict", ("truncate", 200, dumps(_good_body()).encode(), 20), "error",
     ("connection_error",)),
    ("garbage", "predict", ("raw", b"garbage\r\n\r\n"), "error", ("connection_error",)),
    ("no-answer", "predict", ("raw", b""), "error", ("connection_error",)),
    ("bad-length", "predict", ("raw", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}"),
     "error", ("connection_error",)),
    ("bad-chunk", "predict", ("raw", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"zz\r\nxx\r\n"), "error", ("connection_error",)),
    ("gzip-garbage", "predict", ("gzip_garbage",), "error", ERR),
    ("reset", "predict", ("reset",), "error", ("connection_error",)),
    ("hang", "predict", ("hang",), "error", ("timeout",)),
    ("hang-body", "predict", ("hang_body",), "error", ("timeout", "connection_error")),
    ("redirect-302", "predict", ("redirect", 302, "/elsewhere"), "error", ()),
    ("redirect-json", "predict", ("redirect-json", 307), "error", ()),
    ("meta-list", "meta", ("json", 200, [1]), "error", ERR),
    ("meta-no-rate", "meta", ("json", 200, {"name": "m", "input_channels": 1}), "error", ERR),
    ("meta-rate-str", "meta", ("json", 200, {"name": "m", "sample_rate": "8000"}), "error",
     ERR),
    ("meta-rate-zero", "meta", ("json", 200, {"name": "m", "sample_rate": 0}), "error", ERR),
    ("meta-channels-str", "meta", ("json", 200, {"name": "m", "sample_rate": RATE,
                                                 "input_channels": "1"}), "error", ERR),
    ("meta-garbage", "meta", ("body", 200, "text/html", b"<p>"), "error", ERR),
    ("meta-hang", "meta", ("hang",), "error", ("timeout",)),
    ("models-str", "models", ("json", 200, {"models": "x"}), "error", ERR),
    ("models-ints", "models", ("json", 200, {"models": [1]}), "error", ERR),
    ("models-no-name", "models", ("json", 200, {"models": [{"sample_rate": RATE}]}), "error",
     ERR),
    ("models-missing", "models", ("json", 200, {}), "error", ERR),
    ("health-list", "health", ("json", 200, [1]), "error", ERR),
    ("health-html", "health", ("body", 200, "text/html", b"<html>"), "error", ERR),
    ("health-503", "health", ("json", 503, {"error": {"code": "not_ready", "message": "x"}}),
     "error", ("not_ready",)),
    # the WebSocket handshake, answered by a plain HTTP server
    ("ws-404", "stream", ("status", 404), "error", ("http_404",)),
    ("ws-403-json", "stream", ("json", 403, {"error": {"code": "forbidden", "message": "no"}}),
     "error", ("forbidden",)),
    ("ws-200", "stream", ("body", 200, "text/plain", b"hello"), "error", ("http_200",)),
    ("ws-redirect-loop", "stream", ("redirect", 302, "SELF"), "error", ()),
    ("ws-redirect-ftp", "stream", ("redirect", 301, "ftp://127.0.0.1/x"), "error", ()),
    ("ws-garbage", "stream", ("raw", b"garbage\r\n\r\n"), "error", ()),
    ("ws-no-answer", "stream", ("raw", b""), "error", ()),
    ("ws-bad-accept", "stream", ("raw", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket"
                                        b"\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n"
                                        b"\r\n"), "error", ()),
    ("ws-reset", "stream", ("reset",), "error", ()),
    ("ws-hang", "stream", ("hang",), "error", ("timeout",)),
]
REST_DRIVERS = {
    "predict": ["predict_arrays", "predict_file", "cli_predict"],
    "meta": ["model", "stream_file", "cli_stream"],
    "models": ["models"],
    "health": ["health"],
    "stream": ["stream_file", "cli_stream"],
}


@dataclass
class RestSpec:
    idx: int
    name: str
    route: str
    answer: tuple
    expect: str
    codes: tuple
    driver: str

    def __str__(self) -> str:
        return (f"REST case {self.idx} {self.name} driver={self.driver} route={self.route} "
                f"answer={self.answer!r:.200}")


def rest_specs() -> list[RestSpec]:
    rng = random.Random(SEED + 1)
    specs = []
    entries = list(REST_FAULTS) + [(f"good-{r}", r, ("good",), "ok", ())
                                   for r in ("predict", "predict", "meta", "models", "health")]
    for name, route, answer, expect, codes in entries:
        for driver in rng.sample(REST_DRIVERS[route], min(2, len(REST_DRIVERS[route]))):
            if expect == "ok" and route == "meta" and driver != "model":
                continue  # no stream behind a plain HTTP server
            if driver == "cli_stream" and name in ("ws-no-answer", "ws-reset"):
                driver = "stream_file"  # the CLI retries a lost connection 12 times: ~15 s
            specs.append(RestSpec(len(specs), name, route, answer, expect, codes, driver))
    return specs


REST_SPECS = rest_specs()


def rest_route_answer(spec: RestSpec, url: str) -> dict:
    answer = spec.answer
    if answer[0] == "good-as":
        answer = ("json", 200, _good_body(), answer[1])
    elif answer[0] == "good-padded":
        answer = ("json", 200, {**_good_body(), "padding": "x" * BIG})
    elif answer[0] == "redirect-json":  # a redirect whose body looks like an answer
        answer = ("body", answer[1], "application/json", dumps(_good_body()).encode(),
                  (f"Location: {url}/v1/models/m/predict",))
    elif answer[0] == "redirect" and answer[2] == "SELF":
        answer = ("redirect", answer[1], f"{url}/v1/models/m/stream")
    return {spec.route: answer}


def drive_rest(spec: RestSpec, url: str, wav: Path) -> Any:
    """The call; returns what it returned (the caller checks it against the oracle)."""
    with S4DClient(url, timeout=HTTP_T) as c:
        if spec.driver == "predict_arrays":
            # the fake's good answer is for 1000-sample sequences
            return c.predict("m", [np.zeros(1000, np.float32)])
        if spec.driver == "predict_file":
            return c.predict("m", wav)
        if spec.driver == "model":
            return c.model("m")
        if spec.driver == "models":
            return c.models()
        if spec.driver == "health":
            return c.health()
        if spec.driver == "stream_file":
            return list(c.stream_file("m", wav, open_timeout=OPEN_T, end_timeout=END_T,
                                      max_reconnects=MAX_RECONNECTS))
    raise AssertionError(spec.driver)


def check_rest_ok(spec: RestSpec, value: Any, ctx: str) -> None:
    if spec.driver.startswith("predict"):
        assert isinstance(value, list) and len(value) == 1, f"{ctx}: {value!r}"
        p = value[0]
        assert p.label == label_at(1000) and p.num_samples == 1000, f"{ctx}: {p!r}"
        assert p.probabilities == probs_at(1000), f"{ctx}: {p!r}"
    elif spec.driver == "model":
        assert isinstance(value, dict) and value["sample_rate"] == RATE, f"{ctx}: {value!r}"
    elif spec.driver == "models":
        assert isinstance(value, list) and value[0]["name"] == "m", f"{ctx}: {value!r}"
    elif spec.driver == "health":
        assert value == {"status": "ok"}, f"{ctx}: {value!r}"
    else:
        raise AssertionError(f"{ctx}: no check for {spec.driver}")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("spec", REST_SPECS, ids=lambda s: f"{s.idx}-{s.name}-{s.driver}")
def test_rest_client_against_faulty_server(spec: RestSpec, fake_http, tmp_path):
    ctx = ctx_of(spec)
    name = f"r{spec.idx}-{spec.name}"
    url = f"http://127.0.0.1:{fake_http.port}/{name}"
    fake_http.add(HttpCase(name, rest_route_answer(spec, url)))
    wav = write_wav(tmp_path / "x.wav", np.zeros(1000, np.int16))
    t0 = time.monotonic()
    if spec.driver.startswith("cli"):
        cmd = "predict" if spec.driver == "cli_predict" else "stream"
        r = run_cli(cmd, "--url", url, "--model", "m", str(wav), "--timeout", str(HTTP_T))
        if spec.expect == "ok":
            assert r.returncode == 0, f"{ctx}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
            line = json.loads(r.stdout.strip().splitlines()[-1])
            assert line["label"] == label_at(1000) and line["num_samples"] == 1000, ctx
        else:
            check_cli_failure(r, ctx, cmd == "predict", f"s4d {cmd}: ")
            if cmd == "predict" and spec.codes:
                err = json.loads(r.stdout.strip().splitlines()[-1])["error"]
                assert err["code"] in spec.codes, f"{ctx}: {err}"
        bound = CLI_BOUND
    else:
        try:
            value = run_bounded(lambda: drive_rest(spec, url, wav), BOUND, ctx)
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001
            assert spec.expect != "ok", f"{ctx}: raised {exc!r}"
            check_error(exc, ctx, spec.codes)
        else:
            assert spec.expect != "error", f"{ctx}: returned {value!r:.300} on a fault"
            check_rest_ok(spec, value, ctx)
        bound = BOUND
    elapsed = time.monotonic() - t0
    assert elapsed < bound, f"{ctx}: took {elapsed:.1f} s"


# ---------------------------------------------------------------------------- regressions
# Defects the fuzzing left, each pinned by a direct case on the same fake servers.
TRICKLE_T = 0.4  # the client's timeout in the trickle cases (the body takes 4 s)
TRICKLE_CALLS = {
    "predict": "predict", "predict_file": "predict", "models": "models", "health": "health",
    "async_predict": "predict", "async_models": "models", "async_health": "health",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", list(TRICKLE_CALLS))
def test_rest_timeout_bounds_a_trickling_answer(call, fake_http, tmp_path):
    """`timeout` bounds a REST call as a whole: a server that sends its answer one byte at a
    time, each byte far inside the per-read timeout (the body takes 4 s), is cut off after
    `timeout` with S4DError `timeout` (sync and async clients)."""
    route = TRICKLE_CALLS[call]
    url = fake_http.add(HttpCase(f"trickle-{call}", {route: ("trickle", 4.0)}))
    wav = write_wav(tmp_path / "x.wav", np.zeros(1000, np.int16))
    x = [np.zeros(1000, np.float32)]

    def sync_call() -> Any:
        with S4DClient(url, timeout=TRICKLE_T) as c:
            if call == "predict":
                return c.predict("m", x)
            if call == "predict_file":
                return c.predict("m", wav)
            return c.models() if call == "models" else c.health()

    async def async_call() -> Any:
        async with AsyncS4DClient(url, timeout=TRICKLE_T) as c:
            if call == "async_predict":
                return await c.predict("m", x)
            return await (c.models() if call == "async_models" else c.health())

    fn = (lambda: asyncio.run(async_call())) if call.startswith("async") else sync_call
    t0 = time.monotonic()
    with pytest.raises(S4DError) as ei:
        run_bounded(fn, BOUND, call)
    elapsed = time.monotonic() - t0
    assert ei.value.code == "timeout", ei.value
    assert elapsed < TRICKLE_T + 1.5, f"{call}: {elapsed:.2f} s for a {TRICKLE_T} s timeout"


@pytest.mark.timeout(30)
def test_rest_timeout_is_one_deadline_for_all_requests_of_a_call(fake_http, tmp_path):
    """predict(file, scale=) reads the model's metadata, then posts the samples: two
    requests, each well inside `timeout` (0.7 s of 1 s), together past it: S4DError
    `timeout` at `timeout`, not a result after 1.4 s."""
    url = fake_http.add(HttpCase("trickle-two-requests",
                                 {"meta": ("trickle", 0.7), "predict": ("trickle", 0.7)}))
    wav = write_wav(tmp_path / "x.wav", np.zeros(1000, np.int16))

    def call() -> Any:
        with S4DClient(url, timeout=1.0) as c:
            return c.predict("m", wav, scale=1.0)

    t0 = time.monotonic()
    with pytest.raises(S4DError) as ei:
        run_bounded(call, BOUND, "two requests")
    assert ei.value.code == "timeout", ei.value
    assert time.monotonic() - t0 < 2.0


EARLY_FINALS = {
    # PROTOCOL.md: a server draining without a session store sends `final`, then
    # `shutting_down`, and closes 1001
    "drain": ("final_then", {"type": "error", "code": "shutting_down", "message": "bye"}, 1001),
    # a final before any end, the connection left open
    "hold": ("final_hold",),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", list(EARLY_FINALS))
def test_a_session_ended_by_an_early_final_refuses_more_audio(how, fake_stream):
    """After a `final` the client did not ask for (no `end` sent), the session is over:
    send / reset raise S4DError `closed` saying so; samples that went out before the final
    came and that it does not cover make end() raise (none is dropped silently); end()
    returns the final when it covers every sample sent."""

    async def go(model: str, second: bool) -> None:
        async with AsyncS4DClient(fake_stream.url, timeout=HTTP_T) as c:
            s = c.stream(model, sample_rate=RATE, encoding="pcm_s16le", open_timeout=OPEN_T,
                         end_timeout=END_T, reconnect=False)
            await s.open()
            try:
                await s.send(np.zeros(FRAME, np.int16))  # a result, then the early final
                if second:  # sent at once: before the final came, or refused after it
                    await s.send(np.ones(100, np.int16))
            except S4DError as exc:
                assert second and exc.code == "closed" and "final" in exc.message, exc
            msgs = [m async for m in s.results()]
            assert msgs[-1]["type"] == "final" and msgs[-1]["offset"] == FRAME, msgs
            for op in (lambda: s.send(np.ones(10, np.int16)), lambda: s.reset(RESET_T)):
                with pytest.raises(S4DError) as ei:
                    await op()
                assert ei.value.code == "closed" and "final" in ei.value.message, ei.value
                assert "before end()" in ei.value.message, ei.value
            if s.offset > FRAME:  # the second send went out: the final left it out
                with pytest.raises(S4DError) as ei:
                    await s.end()
                assert ei.value.code == "closed" and f"{FRAME} of the {FRAME + 100}" in \
                    ei.value.message, ei.value
            else:
                assert await s.end() == msgs[-1]
            await s.close()

    for second in (False, True):
        model = fake_stream.add(StreamCase(f"early-final-{how}-{second}",
                                           Fault("result", EARLY_FINALS[how])))
        run_bounded(lambda m=model, two=second: asyncio.run(go(m, two)), BOUND, f"{how} {second}")


@pytest.mark.timeout(30)
def test_stream_helper_reports_an_early_final_that_left_samples_out(fake_stream):
    """stream_array: the server's final after the first result (a drain) covers a part of
    the array: S4DError `closed`, not a clean end as if every sample was processed."""
    model = fake_stream.add(StreamCase("early-final-helper",
                                       Fault("result", EARLY_FINALS["drain"])))
    # paced in real time (0.5 s): the final comes after the first result, ~0.02 s in, with
    # most of the array still to send. Sent at once, the client could coalesce the whole
    # array into one message before the first result, and a final covering all of it is a
    # clean end (a flake of the first version of this test).
    x = np.zeros(RATE // 2, np.float32)

    def go() -> list:
        with S4DClient(fake_stream.url, timeout=HTTP_T) as c:
            return list(c.stream_array(model, x, sample_rate=RATE, encoding="pcm_s16le",
                                       realtime=True,
                                       chunk_ms=7, open_timeout=OPEN_T, end_timeout=END_T,
                                       reconnect=False))

    with pytest.raises(S4DError) as ei:
        run_bounded(go, BOUND, "helper")
    assert ei.value.code == "closed" and "final" in ei.value.message, ei.value


@pytest.mark.timeout(30)
def test_send_after_close_raises(fake_stream):
    """close() ends the session for this client: a later send / reset / end raises S4DError
    `closed` (the samples are not buffered and dropped)."""
    model = fake_stream.add(StreamCase("send-after-close", Fault("never", ("none",))))

    async def go() -> None:
        async with AsyncS4DClient(fake_stream.url, timeout=HTTP_T) as c:
            s = c.stream(model, sample_rate=RATE, encoding="pcm_s16le", open_timeout=OPEN_T)
            await s.open()
            await s.send(np.zeros(FRAME, np.int16))
            await s.close()
            for op in (lambda: s.send(np.ones(10, np.int16)), lambda: s.reset(RESET_T),
                       lambda: s.end(END_T)):
                with pytest.raises(S4DError) as ei:
                    await op()
                assert ei.value.code == "closed" and "close()" in ei.value.message, ei.value
            assert s.offset == FRAME

    run_bounded(lambda: asyncio.run(go()), BOUND, "send after close")


def _cancelled(t: asyncio.Task) -> bool:
    return t.done() and t.cancelled()


@pytest.mark.timeout(30)
def test_cancelling_close_while_it_waits_for_the_receiver_raises(fake_stream):
    """close() waits (at most 2 s) for the session's receiver to finish; a cancellation of
    the task running close() meanwhile propagates, and the receiver is stopped. (Stand-in
    for a receiver still busy: a task that would take 30 s.)"""
    model = fake_stream.add(StreamCase("cancel-close-recv", Fault("never", ("none",))))

    async def go() -> None:
        async with AsyncS4DClient(fake_stream.url, timeout=HTTP_T) as c:
            s = c.stream(model, sample_rate=RATE, encoding="pcm_s16le", open_timeout=OPEN_T)
            await s.open()
            busy = s._recv_task = asyncio.ensure_future(asyncio.sleep(HANG_S))
            closer = asyncio.ensure_future(s.close())
            await asyncio.sleep(0.5)  # the closing handshake is done: close() waits on busy
            assert not closer.done()
            closer.cancel()
            await asyncio.wait({closer}, timeout=3)
            assert _cancelled(closer), "close() swallowed the cancellation"
            await asyncio.sleep(0)
            assert _cancelled(busy), "the receiver was left running"

    run_bounded(lambda: asyncio.run(go()), BOUND, "cancel close")


@pytest.mark.timeout(30)
def test_cancelling_close_during_the_closing_handshake_cleans_up(fake_stream):
    """A server that stopped reading holds the closing handshake (up to 2 s); close()
    cancelled meanwhile raises CancelledError after dropping the connection: the receiver
    stops and results() ends, instead of waiting for the server."""
    model = fake_stream.add(StreamCase("cancel-close-handshake",
                                       Fault("result", ("stall", None))))

    async def go() -> None:
        async with AsyncS4DClient(fake_stream.url, timeout=HTTP_T) as c:
            s = c.stream(model, sample_rate=RATE, encoding="pcm_s16le", open_timeout=OPEN_T)
            await s.open()
            await s.send(np.zeros(FRAME, np.int16))
            it = s.results()
            assert (await asyncio.wait_for(it.__anext__(), 2))["type"] == "result"
            closer = asyncio.ensure_future(s.close())
            await asyncio.sleep(0.3)
            assert not closer.done()
            closer.cancel()
            await asyncio.wait({closer}, timeout=3)
            assert _cancelled(closer), "close() swallowed the cancellation"
            rest = await asyncio.wait_for(_drain_results(it), 1.0)  # it ends
            assert rest == [], rest
            await asyncio.wait({s._recv_task}, timeout=1)
            assert s._recv_task.done(), "the receiver was left running"

    run_bounded(lambda: asyncio.run(go()), BOUND, "cancel close handshake")


async def _drain_results(it: Any) -> list:
    return [m async for m in it]


@pytest.mark.timeout(30)
def test_cancelling_async_with_exit_closes_then_raises(fake_stream):
    """`async with` exit ends the session (end() waits for the final); cancelled while it
    waits, the session is closed and the CancelledError propagates."""
    model = fake_stream.add(StreamCase("cancel-aexit", Fault("end", ("hang",))))
    box: dict = {}

    async def body(c: AsyncS4DClient) -> None:
        async with c.stream(model, sample_rate=RATE, encoding="pcm_s16le",
                            open_timeout=OPEN_T, end_timeout=HANG_S) as s:
            box["s"] = s
            await s.send(np.zeros(FRAME, np.int16))

    async def go() -> None:
        async with AsyncS4DClient(fake_stream.url, timeout=HTTP_T) as c:
            t = asyncio.ensure_future(body(c))
            for _ in range(100):  # until end() waits for the final
                await asyncio.sleep(0.02)
                if "s" in box and box["s"]._end_sent:
                    break
            await asyncio.sleep(0.1)
            t.cancel()
            await asyncio.wait({t}, timeout=4)
            assert _cancelled(t), t
            s = box["s"]
            assert s._closing, "the session was not closed"
            await asyncio.wait({s._recv_task}, timeout=1)
            assert s._recv_task.done(), "the receiver was left running"

    run_bounded(lambda: asyncio.run(go()), BOUND, "cancel aexit")


@pytest.mark.timeout(30)
def test_cancelling_a_stream_helper_while_it_closes_propagates(fake_stream):
    """stream_chunks left early: its cleanup cancels the chunk source and waits for it
    (here a source slow to let go); a cancellation of the task meanwhile propagates, once
    the session is closed, instead of being swallowed."""
    model = fake_stream.add(StreamCase("cancel-helper-close", Fault("never", ("none",))))

    async def go() -> None:
        async with AsyncS4DClient(fake_stream.url, timeout=HTTP_T) as c:
            letting_go = asyncio.Event()
            sessions: list = []

            async def source() -> Any:
                try:
                    yield np.zeros(FRAME, np.float32)
                    await asyncio.sleep(HANG_S)  # a live source waiting for input
                finally:
                    letting_go.set()
                    await asyncio.sleep(3)  # slow to let go

            async def consume() -> str:
                gen = c.stream_chunks(model, source(), sample_rate=RATE,
                                      encoding="pcm_s16le", open_timeout=OPEN_T,
                                      on_session=sessions.append)
                async with contextlib.aclosing(gen) as it:
                    async for m in it:
                        if m["type"] == "result":
                            break  # leave early: aclose() runs the helper's cleanup
                return "went on"

            t = asyncio.ensure_future(consume())
            await asyncio.wait_for(letting_go.wait(), 3)
            await asyncio.sleep(0.05)
            t.cancel()
            await asyncio.wait({t}, timeout=2.5)
            assert _cancelled(t), "the helper's cleanup swallowed the cancellation"
            assert sessions and sessions[0]._closing, "the session was not closed"

    run_bounded(lambda: asyncio.run(go()), BOUND, "cancel helper")
