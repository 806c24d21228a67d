"""uvicorn's sans-I/O WebSocket protocol with a direct lane for a stream's audio and results.

Through ASGI every 20 ms frame costs two task switches: the protocol queues the message and
wakes the app's reader coroutine (twenty frames deep in middleware), and each result goes
through a queue to a sender task. This protocol lets an attached stream (server/ws.py) take a
complete binary message synchronously inside `data_received`, and write a result synchronously
to the transport, with the same framing and the same guards as uvicorn's own `send`.

The lane is only ever a shortcut past an empty queue: the app's reader arms it each time it
waits with nothing queued, and the moment any message takes uvicorn's path (a control message,
or a binary one the stream declined) it is disarmed until the reader has dealt with that
message and waits again, so nothing overtakes it. Handshake, control messages, pings, close and
disconnect stay uvicorn's.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from server.errors import StreamError

#: scope key under which the protocol offers itself to the app
DIRECT = "s4d.ws_direct"

try:  # uvicorn >= 0.35 with websockets >= 13 has the sans-I/O implementation
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.exceptions import InvalidState
except ImportError:  # pragma: no cover - older uvicorn: streams use the plain ASGI path
    WebSocketsSansIOProtocol = None


if WebSocketsSansIOProtocol is not None:

    class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
        #: armed by the app's reader while it waits: bytes -> True if it took the message;
        #: disarmed whenever a message goes to the app's queue
        binary_sink: Callable[[bytes], bool] | None = None

        def arm(self, sink: Callable[[bytes], bool]) -> None:
            """Let `sink` take binary messages until one goes to the queue (not while any
            message waits there: it must reach the reader first)."""
            self.binary_sink = sink if self.queue.empty() else None

        def disarm(self) -> None:
            self.binary_sink = None

        def handle_connect(self, event) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None:  # the app task is created but has not run yet
                scope[DIRECT] = self

        def handle_bytes(self, event) -> None:
            sink = self.binary_sink
            if sink is not None and event.fin and not self.close_sent and self.queue.empty():
                try:
                    if sink(event.data):
                        return
                except Exception:  # the ASGI path redoes it and reports any error
                    pass
            super().handle_bytes(event)

        def unsent_bytes(self) -> int:
            """Bytes written to this connection that the client has not taken yet."""
            return self.transport.get_write_buffer_size()

        def send_receive_event_to_app(self) -> None:
            self.disarm()  # the reader has a message to handle first
            text = b"".join(self.frames) if self.curr_msg_data_type == "text" else b""
            if not self.close_sent and not text.isascii():  # (ASCII text is UTF-8: no 2nd decode)
                try:
                    text.decode()
                except UnicodeDecodeError:
                    # RFC 6455: fail with 1007, as uvicorn does; but uvicorn logs a traceback
                    # at ERROR for each, so any client could fill the server's logs with them
                    self.frames = []
                    self.logger.info("%s:%s - text message that is not UTF-8: closed with 1007",
                                     *(self.client or ("?", "?")))
                    self.conn.send_close(1007)
                    self.handle_parser_exception()
                    return
            super().send_receive_event_to_app()

        def _open(self) -> bool:
            """Whether a frame written now still reaches an open WebSocket connection."""
            return not (self.close_sent or not self.handshake_complete
                        or self.initial_response is not None or self.transport.is_closing())

        def send_text_now(self, data: bytes) -> bool:
            """A text message written now (as uvicorn's `websocket.send` would); False when
            the connection can no longer take one (the caller falls back to ASGI send)."""
            if not self._open():
                return False
            try:
                self.conn.send_text(data)
            except InvalidState:
                return False
            self.transport.write(b"".join(self.conn.data_to_send()))
            return True

        #: something arrived from the client since the last keepalive ping
        _heard = False

        def data_received(self, data: bytes) -> None:
            self._heard = True
            super().data_received(data)

        def send_keepalive_ping(self) -> None:
            self._heard = False
            super().send_keepalive_ping()

        def keepalive_timeout(self) -> None:
            """No pong within `ws_ping_timeout` of a keepalive ping (sent every
            `ws_ping_interval`). uvicorn then fails the connection with 1011 and no `error`
            message, but 1011 means a server error here, and the pong may only be waiting
            behind audio this server has not read yet: backpressure pauses reading while a
            stream's buffer is full, and a client sending faster than real time has its
            socket buffers full of audio ahead of the pong. So: while reading is paused, or
            anything arrived since the ping, the client is not the one that stopped (wait
            another `ws_ping_timeout`); else it stopped reading its socket or is gone: the
            documented `timeout` error and close 1008 (the app sees the disconnect, so the
            session stays resumable for the idle TTL)."""
            self.pong_timer = None
            if self.close_sent or self.transport.is_closing():
                self.pending_ping_payload = None
                return
            if self.read_paused or self._heard:
                self._heard = False
                self.pong_timer = self.loop.call_later(self.ping_timeout, self.keepalive_timeout)
                return
            self.pending_ping_payload = None
            err = StreamError("timeout", f"no answer to the server's ping within "
                                         f"{self.ping_timeout:g} s: read the socket")
            try:
                self.conn.send_text(orjson.dumps(err.to_message()))
            except InvalidState:
                pass
            self.conn.fail(err.close_code, "keepalive ping timeout")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.transport.close()
            app = getattr(self, "scope", {}).get("app")
            state = getattr(getattr(app, "state", None), "s4d", None)
            if state is not None:
                state.metrics.error(err.code)

        def close_now(self, code: int, reason: str = "") -> bool:
            """The close frame written now (as uvicorn's `websocket.close` would, closing
            timer included) without first waiting for the transport to become writable: a
            client that stopped reading (slow_consumer) keeps it unwritable, and a close that
            waited for it was cancelled with the stream's task and never sent, leaving the
            connection open with no close. False when the connection is past that point."""
            if not self._open():
                return False
            try:
                self.conn.send_close(code, reason)
            except InvalidState:
                return False
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)
            return True

else:  # pragma: no cover
    DirectWebSocketProtocol = None


def uvicorn_ws_option() -> dict:
    """uvicorn.Config keyword selecting this protocol (nothing where uvicorn lacks it)."""
    return {"ws": DirectWebSocketProtocol} if DirectWebSocketProtocol is not None else {}
