"""`WS /v1/models/{name}/stream`: the streaming protocol of PROTOCOL.md.

One `StreamConnection` per socket. It validates every message, feeds the session's buffer
(stopping reading while the buffer is full: backpressure), and a sender task writes the
session's outbox (results from the scheduler, replies, errors) in order. A bad client gets an
`error` and a close code; nothing it sends can reach another session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from server.errors import StreamError
from server.scheduler import ModelScheduler
from server.sessions import ENCODINGS, Close, Session
from server.state import ServerState

log = logging.getLogger("s4d.ws")

_TYPES = {"start", "reset", "end"}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_start(msg: dict, meta, default_emit: int | None) -> dict:
    """Validated start fields, or StreamError (bad_start / bad_encoding / bad_sample_rate /
    bad_channels), in that order of precedence."""
    for key in ("sample_rate", "encoding", "channels"):
        if key not in msg:
            raise StreamError("bad_start", f"start needs {key!r}")
    sr, ch, enc = msg["sample_rate"], msg["channels"], msg["encoding"]
    if not _int(sr) or sr <= 0:
        raise StreamError("bad_start", "sample_rate must be a positive integer")
    if not _int(ch) or ch <= 0:
        raise StreamError("bad_start", "channels must be a positive integer")
    emit = msg.get("emit_every")
    if emit is None:
        emit = meta.frame_size if default_emit is None else default_emit
    elif not _int(emit) or emit < 0:
        raise StreamError("bad_start", "emit_every must be an integer >= 0 (samples)")
    sid, offset = msg.get("session_id"), msg.get("offset")
    if sid is not None and (not isinstance(sid, str) or not sid or len(sid) > 128):
        raise StreamError("bad_start", "session_id must be a non-empty string")
    if offset is not None:
        if not _int(offset) or offset < 0:
            raise StreamError("bad_start", "offset must be an integer >= 0")
        if sid is None:
            raise StreamError("bad_start", "offset needs a session_id (resume)")
    if not isinstance(enc, str) or enc not in ENCODINGS:
        raise StreamError("bad_encoding", f"encoding {enc!r}: use one of {sorted(ENCODINGS)}")
    if sr != meta.sample_rate:
        raise StreamError(
            "bad_sample_rate",
            f"sample_rate {sr} != the model's {meta.sample_rate} (streams are not resampled)",
        )
    if ch != meta.input_channels:
        raise StreamError("bad_channels", f"channels {ch} != the model's {meta.input_channels}")
    return {"encoding": enc, "emit_every": emit, "session_id": sid, "offset": offset}


class StreamConnection:
    def __init__(self, ws: WebSocket, state: ServerState, model: str):
        self.ws = ws
        self.st = state
        self.model = model
        self.session: Session | None = None
        self.scheduler: ModelScheduler | None = None
        self.sender: asyncio.Task | None = None
        self._finishing = False
        self._finished = asyncio.Event()

    # ---- plumbing ----------------------------------------------------------------------
    async def _receive(self) -> tuple[str, Any] | None:
        m = await self.ws.receive()
        if m["type"] == "websocket.disconnect":
            return None
        limit = self.st.settings.max_frame_bytes
        data = m.get("bytes")
        if data is not None:
            if len(data) > limit:
                raise StreamError("too_big", f"binary message of {len(data)} bytes > limit {limit}")
            return "bytes", data
        text = m.get("text")
        if text is None:
            return None
        if len(text) > limit:
            raise StreamError("too_big", f"text message of {len(text)} bytes > limit {limit}")
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, ValueError) as exc:
            raise StreamError("bad_json", f"not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise StreamError("bad_json", "a text message must be a JSON object")
        t = obj.get("type")
        if not isinstance(t, str) or t not in _TYPES:
            raise StreamError("unknown_type", f"unknown message type {t!r}; expected start/reset/end")
        return "json", obj

    async def _send_direct(self, msg: dict, close: int | None = None) -> None:
        try:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.send_text(json.dumps(msg, separators=(",", ":")))
                if close is not None:
                    await self.ws.close(close)
        except Exception:  # the peer is gone
            pass

    async def _sender_loop(self, s: Session) -> None:
        ws = self.ws
        try:
            while True:
                item = await s.outbox.get()
                if isinstance(item, Close):
                    if ws.application_state == WebSocketState.CONNECTED:
                        await ws.close(item.code, item.reason)
                    return
                await ws.send_text(json.dumps(item, separators=(",", ":")))
        except asyncio.CancelledError:
            raise
        except Exception:  # peer gone: the reader sees the disconnect
            return

    async def _wait_sender(self, timeout: float = 5.0) -> None:
        if self.sender is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.sender), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
            pass

    async def _fail(self, err: StreamError) -> None:
        self.st.metrics.error(err.code)
        s = self.session
        if err.code == "internal":
            log.error("stream model=%s session=%s internal error: %s",
                      self.model, s.id if s else None, err.message)
        if s is not None and self.sender is not None and not s.closed:
            s.send(err.to_message())
            s.send(Close(err.close_code))
            await self._wait_sender()
            if self.scheduler is not None:
                self.scheduler.close_session(s, "error")
        else:
            await self._send_direct(err.to_message(), err.close_code)

    # ---- entry -------------------------------------------------------------------------
    async def run(self) -> None:
        await self.ws.accept()
        self.st.connections.add(self)
        try:
            await self._serve()
        except StreamError as err:
            await self._fail(err)
        except (WebSocketDisconnect, ConnectionError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("stream model=%s: unexpected error", self.model)
            await self._fail(StreamError("internal", f"unexpected server error: {type(exc).__name__}"))
        finally:
            self._detach()
            self.st.connections.discard(self)

    def _detach(self) -> None:
        s = self.session
        if self.sender is not None and not self.sender.done():
            self.sender.cancel()
        if s is None:
            return
        if s.attached and not s.closed:
            s.attached = False
            s.detached_at = time.monotonic()
            s.drop_partial_bytes()
            log.info("session_detach model=%s session=%s offset=%d", self.model, s.id, s.received)
        s.done.set()

    async def _serve(self) -> None:
        st = self.st
        if st.shutting_down:
            raise StreamError("shutting_down", "the server is stopping")
        lm = st.registry.get(self.model)
        if lm is None:
            if not st.registry.ready:
                raise StreamError("server_busy", "models are still loading; try again shortly")
            raise StreamError("unknown_model", f"no model named {self.model!r}")
        if lm.scheduler is None:
            raise StreamError("not_streamable",
                              f"model {self.model!r} is bidirectional: batch /predict only")
        sched = self.scheduler = lm.scheduler
        meta = lm.metadata

        first = await self._receive()
        if first is None:
            return
        kind, obj = first
        if kind == "bytes":
            raise StreamError("not_started", "send a JSON start message first")
        if obj["type"] != "start":
            raise StreamError("not_started", f"{obj['type']!r} before start")
        p = parse_start(obj, meta, st.settings.emit_every)

        if p["session_id"] is None:
            s = await sched.open_session(
                channels=meta.input_channels, encoding=p["encoding"], emit_every=p["emit_every"]
            )
            resumed = False
        else:
            s = sched.sessions.get(p["session_id"])
            if s is None or s.closed:
                raise StreamError("unknown_session",
                                  f"no session {p['session_id']!r} (never existed or expired)")
            if s.attached:
                raise StreamError("session_busy", "that session is attached to another connection")
            held = s.received
            offset = held if p["offset"] is None else p["offset"]
            if offset > held:
                raise StreamError("offset_gap", f"offset {offset} > {held} samples held")
            s.skip = held - offset
            s.drop_partial_bytes()
            s.set_encoding(p["encoding"])
            s.emit_every = p["emit_every"]
            resumed = True
        if st.shutting_down:  # raced with the drain while opening
            if not resumed:
                sched.close_session(s, "shutdown")
            raise StreamError("shutting_down", "the server is stopping")
        s.attached = True
        s.done = asyncio.Event()
        self.session = s
        log.info("session_start model=%s session=%s resumed=%s offset=%d encoding=%s emit_every=%d",
                 self.model, s.id, resumed, s.received, s.encoding, s.emit_every)
        await self.ws.send_text(json.dumps({
            "type": "started", "session_id": s.id, "offset": s.received,
            "frame_size": meta.frame_size, "sample_rate": meta.sample_rate,
            "channels": meta.input_channels, "classes": list(meta.classes),
        }))
        self.sender = asyncio.get_running_loop().create_task(self._sender_loop(s))

        while True:
            if not s.space.is_set():  # backpressure: stop reading until the scheduler drains
                await s.space.wait()
            if s.closed or self._finishing:
                await self._until_finished()
                return
            m = await self._receive()
            if m is None:
                return
            kind, obj = m
            if s.closed or self._finishing:
                await self._until_finished()
                return
            if kind == "bytes":
                if s.feed(obj):
                    sched.notify()
                continue
            t = obj["type"]
            if t == "start":
                raise StreamError("already_started", "this connection already has a session")
            if s.pending:
                raise StreamError("partial_sample",
                                  f"{len(s.pending)} trailing bytes do not form a whole sample")
            if t == "reset":
                await sched.flush(s)
                s.send(s.result("result", segment_end=True))
                await sched.reset_state(s)
                s.send({"type": "reset", "offset": s.consumed})
            else:  # end
                await self.finish(reason="end")
                await self._until_finished()
                return

    async def _until_finished(self) -> None:
        if self._finishing:
            await self._finished.wait()
        else:
            await self._wait_sender()

    async def finish(self, reason: str) -> None:
        """Flush, send `final`, close (1000 for end, 1001 + shutting_down for shutdown)."""
        s, sched = self.session, self.scheduler
        if s is None or sched is None or s.closed or self._finishing:
            return
        self._finishing = True
        try:
            await self._finish(s, sched, reason)
        finally:
            self._finished.set()

    async def _finish(self, s: Session, sched: ModelScheduler, reason: str) -> None:
        try:
            await asyncio.wait_for(sched.flush(s), self.st.settings.graceful_timeout_s or None)
            s.send(s.result("final"))
        except (asyncio.TimeoutError, StreamError):
            pass
        if reason == "end":
            s.send(Close(1000))
        else:
            err = StreamError("shutting_down", "the server is stopping")
            self.st.metrics.error(err.code)
            s.send(err.to_message())
            s.send(Close(err.close_code))
        await self._wait_sender()
        sched.close_session(s, reason)

    async def shutdown(self) -> None:
        """Called by the app's drain on SIGTERM."""
        if self.session is not None and self.sender is not None:
            await self.finish(reason="shutdown")
        else:
            await self._send_direct(
                StreamError("shutting_down", "the server is stopping").to_message(), 1001
            )


async def stream_endpoint(websocket: WebSocket, name: str) -> None:
    await StreamConnection(websocket, websocket.app.state.s4d, name).run()
