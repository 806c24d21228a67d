"""`WS /v1/models/{name}/stream`: the streaming protocol of PROTOCOL.md (front-end side).

One `StreamConnection` per socket. It validates every message, decodes bytes into samples and
hands them to its `StreamHandle` (which batches them to the engine per tick); it stops reading
while the session holds `max_buffer_samples` unconsumed samples (backpressure). Results,
replies and errors go out in order. A bad client gets an `error` and a close code; nothing it
sends can reach another session.

Under server.ws_direct's protocol an attached stream's audio and results skip the ASGI queues
(the `direct lane`): binary messages are decoded inside the protocol's `data_received` while the
reader waits with nothing queued, and a result is written at once while nothing waits in the
outbox. Anything else (control messages, a full buffer, a close) takes the ASGI path in order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from server import stream_events
from server.errors import StreamError
from server.frontend.client import EngineUnavailable, StreamHandle
from server.frontend.decoder import ENCODINGS, SampleDecoder
from server.state import ServerState
from server.ws_direct import DIRECT

log = logging.getLogger("s4d.ws")

_TYPES = {"start", "reset", "end"}
_CLOSE = object()


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _too_wide(v: Any) -> str:
    """Why a whole number was refused: JSON integers past 64 bits are parsed as floats."""
    return (" (integers past 64 bits are not accepted)"
            if isinstance(v, float) and v.is_integer() and abs(v) >= 2**63 else "")


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
        raise StreamError("bad_start", f"emit_every must be an integer >= 0 (samples){_too_wide(emit)}")
    sid, offset = msg.get("session_id"), msg.get("offset")
    if sid is not None and (not isinstance(sid, str) or not sid or len(sid) > 128):
        raise StreamError("bad_start", "session_id must be a non-empty string")
    if offset is not None:
        if not _int(offset) or offset < 0:
            raise StreamError("bad_start", f"offset must be an integer >= 0{_too_wide(offset)}")
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
        self.handle: StreamHandle | None = None
        self.classes: tuple[str, ...] = ()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.sender: asyncio.Task | None = None
        self._finishing = False
        self._finished = asyncio.Event()
        self._failed: StreamError | None = None
        # the direct lane (server.ws_direct), when the server offers it
        self._direct = ws.scope.get(DIRECT)
        self._last_lane_rx = float("-inf")  # loop time of the last message the lane took
        self._eager = False  # results may be written at once (after `started`)
        self._pending = 0  # outbox items not yet written: while any, later ones queue behind
        self._decoder: SampleDecoder | None = None
        self._slow = False  # the client stopped reading its results (slow_consumer)

    # ---- plumbing ----------------------------------------------------------------------
    async def _receive(self, timeout: float | None = None,
                       what: str = "a message") -> tuple[str, Any] | None:
        """The next message; `timeout` (s): a client that sends nothing for that long gets
        `timeout` (it must not hold a connection, and a state slot, forever)."""
        loop = asyncio.get_running_loop()
        t0, wait = loop.time(), timeout
        while True:
            try:
                m = await asyncio.wait_for(self.ws.receive(), wait or None)
                break
            except asyncio.TimeoutError:  # messages the direct lane took count as activity
                quiet = loop.time() - max(t0, self._last_lane_rx)
                if quiet >= timeout:
                    raise StreamError("timeout", f"no {what} within {timeout:g} s") from None
                wait = timeout - quiet
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
        size = len(text) if text.isascii() else len(text.encode())  # the limit is in bytes
        if size > limit:
            raise StreamError("too_big", f"text message of {size} bytes > limit {limit}")
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise StreamError("bad_json", f"not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise StreamError("bad_json", "a text message must be a JSON object")
        t = obj.get("type")
        if not isinstance(t, str) or t not in _TYPES:
            raise StreamError("unknown_type", f"unknown message type {t!r}; expected start/reset/end")
        return "json", obj

    def send(self, msg) -> None:
        """In order: written at once on the direct lane when nothing waits, else queued for
        the sender task."""
        if (self._eager and not self._pending and type(msg) is dict
                and self._direct.send_text_now(orjson.dumps(msg))):
            self._check_unsent()
            return
        self._pending += 1
        self.outbox.put_nowait(msg)

    def _check_unsent(self) -> None:
        """A client that does not read its results must not grow the server's memory without
        bound: past `max_unsent_bytes` unread it gets `slow_consumer` and close 1008; its
        session stays resumable (resume, then read)."""
        lane, limit = self._direct, self.st.settings.max_unsent_bytes
        if self._slow or lane is None or lane.unsent_bytes() <= limit:
            return
        self._slow, self._eager = True, False
        err = StreamError("slow_consumer", f"more than {limit} bytes of results unread: "
                          "resume the session and read its messages")
        asyncio.get_running_loop().create_task(self._fail(err))

    def _take_bytes(self, data: bytes) -> bool:
        """The direct lane's sink: a binary message decoded and queued for the engine now.
        Declines (False: the reader gets it through ASGI, in order) whenever the plain path
        must decide: backpressure, a finish under way, an oversized or bad message. (While
        the reader handles a message the protocol keeps the lane disarmed.)"""
        h = self.handle
        if (h.closed or self._finishing or not h.space.is_set()
                or len(data) > self.st.settings.max_frame_bytes):
            return False
        rows = self._decoder.feed(data)  # a StreamError leaves it unchanged: declined
        now = asyncio.get_running_loop().time()
        h.push(rows, now)
        self._last_lane_rx = now
        return True

    async def _send_direct(self, msg: dict, close: int | None = None) -> None:
        try:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.send_text(orjson.dumps(msg).decode())
                if close is not None:
                    await self.ws.close(close)
        except Exception:  # the peer is gone
            pass

    async def _sender_loop(self) -> None:
        """Messages in order; text straight to the transport where the server offers the
        direct lane (past every middleware's send wrapper, which act only on the handshake),
        else through Starlette; close through Starlette (it tracks the state)."""
        ws, lane = self.ws, self._direct
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, tuple) and item and item[0] is _CLOSE:
                    if ws.application_state == WebSocketState.CONNECTED:
                        if lane is not None and lane.close_now(item[1]):
                            ws.application_state = WebSocketState.DISCONNECTED  # as close() does
                        else:
                            await ws.close(item[1])
                    return
                if lane is not None:
                    if not lane.send_text_now(orjson.dumps(item)):
                        return  # closing: the reader sees the disconnect
                else:
                    await ws.send_text(orjson.dumps(item).decode())
                self._pending -= 1
                self._check_unsent()
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

    def _result(self, kind: str, offset: int, probs, latency_ms: float | None = None,
                **extra) -> dict:
        h = self.handle
        msg: dict = {"type": kind, "session_id": h.session_id if h else None, "offset": offset}
        if probs is None:
            msg["label"] = None
            msg["probabilities"] = None
        else:  # numpy's tolist / argmax: the same floats and the same first maximum as a
            # Python loop, in half the time per message (1.8 vs 3.2 us with the JSON, measured)
            probs = np.asarray(probs)
            msg["label"] = self.classes[int(probs.argmax())]
            msg["probabilities"] = dict(zip(self.classes, probs.tolist(), strict=True))
        if latency_ms is not None:
            msg["latency_ms"] = round(float(latency_ms), 3)
        msg.update(extra)
        return msg

    # ---- callbacks from the engine client ------------------------------------------------
    def _on_result(self, kind: str, r: dict) -> None:
        if kind == "stored":  # a snapshot up to this offset is in the session store
            h = self.handle
            self.send({"type": "stored", "session_id": h.session_id if h else None,
                       "offset": r["offset"]})
            return
        if kind == "event":
            h = self.handle
            self.send({"type": "event", "session_id": h.session_id if h else None, **r})
            return
        self.send(self._result(kind, r["offset"], r["probs"], r.get("latency_ms")))

    def _on_closed(self, code: str, message: str) -> None:
        """The engine ended the session (step failure, engine lost): error, then close."""
        err = StreamError(code, message)
        self._failed = err
        self.st.metrics.error(err.code)
        self.send(err.to_message())
        self.send((_CLOSE, err.close_code))

    async def _fail(self, err: StreamError) -> None:
        self.st.metrics.error(err.code)
        h = self.handle
        if err.code == "internal":
            log.error("stream model=%s internal error: %s", self.model, err.message)
        if h is not None and self.sender is not None and not h.closed:
            self.send(err.to_message())
            self.send((_CLOSE, err.close_code))
            await self._wait_sender()
            if err.code in ("timeout", "slow_consumer"):  # free the connection, keep the
                h.client.detach(h)  # session: resumable for the idle TTL
                return
            h.client.close(h, "error")
            h.closed = True
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
        except EngineUnavailable as exc:
            await self._fail(StreamError("internal", str(exc)))
        except (WebSocketDisconnect, ConnectionError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("stream model=%s: unexpected error", self.model)
            await self._fail(StreamError("internal", f"unexpected server error: {type(exc).__name__}"))
        finally:
            if self._direct is not None:
                self._direct.disarm()
            self._eager = False
            self._detach()
            self.st.connections.discard(self)

    def _detach(self) -> None:
        if self.sender is not None and not self.sender.done():
            self.sender.cancel()
        h = self.handle
        if h is not None and not h.closed:
            h.client.detach(h)

    async def _serve(self) -> None:
        st = self.st
        if st.shutting_down:
            raise StreamError("shutting_down", "the server is stopping")
        lm = st.registry.get(self.model)
        if lm is None:
            if not st.registry.ready:
                if st.load_error:
                    raise StreamError("server_busy", f"model loading failed: {st.load_error}")
                raise StreamError("server_busy", "models are still loading; try again shortly")
            raise StreamError("unknown_model", f"no model named {self.model!r}")
        if not lm.streamable:
            raise StreamError("not_streamable",
                              f"model {self.model!r} is bidirectional: batch /predict only")
        meta = lm.metadata
        self.classes = meta.classes

        first = await self._receive(st.settings.start_timeout_s, "start message")
        if first is None:
            return
        kind, obj = first
        if kind == "bytes":
            raise StreamError("not_started", "send a JSON start message first")
        if obj["type"] != "start":
            raise StreamError("not_started", f"{obj['type']!r} before start")
        p = parse_start(obj, meta, st.settings.emit_every)
        try:
            events = stream_events.resolve(obj.get("events"), meta)
        except stream_events.EventsSettingsError as exc:
            raise StreamError("bad_start", str(exc)) from None
        key = self.ws.scope.get("s4d_key")  # set by server.auth when API keys are configured
        h = await st.client.open(lm, session_id=p["session_id"], offset=p["offset"],
                                 encoding=p["encoding"], emit_every=p["emit_every"],
                                 on_result=self._on_result, on_closed=self._on_closed,
                                 key=key.name if key else None,
                                 key_max=key.max_sessions if key else None)
        self.handle = h
        h.detector = stream_events.detector(events, meta)
        held = h.received
        offset = held if p["offset"] is None else p["offset"]
        decoder = self._decoder = SampleDecoder(p["encoding"], meta.input_channels,
                                                skip=held - offset)
        if st.shutting_down:  # raced with the drain while opening
            h.client.close(h, "shutdown") if p["session_id"] is None else h.client.detach(h)
            h.closed = True
            raise StreamError("shutting_down", "the server is stopping")
        await self.ws.send_text(orjson.dumps({
            "type": "started", "session_id": h.session_id, "offset": held,
            "frame_size": meta.frame_size, "sample_rate": meta.sample_rate,
            "channels": meta.input_channels, "classes": list(meta.classes),
            **({"snapshots": True} if st.settings.session_store else {}),
            "events": stream_events.describe(events, meta),
        }).decode())
        self.sender = asyncio.get_running_loop().create_task(self._sender_loop())
        loop = asyncio.get_running_loop()
        lane = self._direct
        self._eager = lane is not None

        while True:
            if not h.space.is_set():  # backpressure: stop reading until the engine drains
                await h.space.wait()
            if h.closed or self._finishing:
                await self._until_finished()
                return
            if lane is not None:  # armed while this reader waits (server.ws_direct)
                lane.arm(self._take_bytes)
            try:
                m = await self._receive(st.settings.stream_idle_timeout_s, "data")
            finally:
                if lane is not None:
                    lane.disarm()
            if m is None:
                return
            kind, obj = m
            if h.closed or self._finishing:
                await self._until_finished()
                return
            if kind == "bytes":
                h.push(decoder.feed(obj), loop.time())
                continue
            t = obj["type"]
            if t == "start":
                raise StreamError("already_started", "this connection already has a session")
            if decoder.pending:
                raise StreamError("partial_sample",
                                  f"{len(decoder.pending)} trailing bytes do not form a whole sample")
            if t == "reset":
                r = await h.client.flush(h, reset=True)
                self.send(self._result("result", r["consumed"], r["probs"], segment_end=True))
                self.send({"type": "reset", "offset": r["consumed"]})
                if h.detector is not None:
                    h.detector.reset(r["consumed"])
            else:  # end
                await self.finish(reason="end")
                await self._until_finished()
                return

    async def _until_finished(self) -> None:
        if self._finishing:
            await self._finished.wait()
        else:
            await self._wait_sender()

    async def _park(self) -> bool:
        """Store the session for another replica, then `shutting_down` + `resume: true`, 1001.
        False (nothing sent) when it could not be stored. It gets half of the drain's time:
        parks reach the store one at a time, and with the store hung each waits out its
        timeout, so a full graceful_timeout_s left no time for the `final` instead."""
        h = self.handle
        if h is None or h.closed or self._finishing:
            return True
        self._finishing = True
        try:
            try:
                offset = await asyncio.wait_for(h.client.park(h),
                                                self.st.settings.graceful_timeout_s / 2 or None)
            except (asyncio.TimeoutError, StreamError, EngineUnavailable) as exc:
                log.warning("drain: session not stored (%s): sending final instead", exc)
                self._finishing = False
                return False
            self.st.metrics.error("shutting_down")
            self.send({"type": "error", "code": "shutting_down", "resume": True,
                       "offset": offset, "message": "the server is stopping; the session is "
                       "stored: resume it (same session_id) on another replica"})
            self.send((_CLOSE, 1001))
            await self._wait_sender()
            return True
        finally:
            if self._finishing:
                self._finished.set()

    async def finish(self, reason: str) -> None:
        """Flush, send `final`, close (1000 for end, 1001 + shutting_down for shutdown)."""
        h = self.handle
        if h is None or h.closed or self._finishing:
            return
        self._finishing = True
        try:
            await self._finish(h, reason)
        finally:
            self._finished.set()

    async def _finish(self, h: StreamHandle, reason: str) -> None:
        client = h.client
        try:
            r = await asyncio.wait_for(client.flush(h, end=True),
                                       self.st.settings.graceful_timeout_s or None)
            self.send(self._result("final", r["consumed"], r["probs"]))
        except (asyncio.TimeoutError, StreamError, EngineUnavailable) as exc:
            # never close as if all were well without the answer
            code = "shutting_down" if reason == "shutdown" else "internal"
            err = StreamError(code, f"no final result: {type(exc).__name__}")
            self.st.metrics.error(err.code)
            self.send(err.to_message())
            self.send((_CLOSE, err.close_code))
            client.close(h, "error")
            h.closed = True
            await self._wait_sender()
            return
        h.closed = True
        client.forget(h)
        if reason == "end":
            self.send((_CLOSE, 1000))
        else:
            err = StreamError("shutting_down", "the server is stopping")
            self.st.metrics.error(err.code)
            self.send(err.to_message())
            self.send((_CLOSE, err.close_code))
        await self._wait_sender()

    async def shutdown(self) -> None:
        """Called by the app's drain on SIGTERM. With a session store: the session is stored
        and the client told to resume elsewhere; else (or if storing fails) flush + `final`."""
        if self.handle is not None and self.sender is not None:
            if self.st.settings.session_store and await self._park():
                return
            await self.finish(reason="shutdown")
        else:
            await self._send_direct(
                StreamError("shutting_down", "the server is stopping").to_message(), 1001
            )


async def stream_endpoint(websocket: WebSocket, name: str) -> None:
    await StreamConnection(websocket, websocket.app.state.s4d, name).run()
