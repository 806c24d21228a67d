"""Streaming sessions over ``WS /v1/models/{name}/stream`` (see server/PROTOCOL.md).

`AsyncStreamSession` is the real implementation; `StreamSession` (in client.py) drives one
from synchronous code through a private event loop thread.

Resume: the client keeps every sample it sent from the last offset the server acknowledged
(the ``offset`` of its latest ``result``/``reset``) in a bounded buffer. When the connection
drops without ``end``, it reconnects with ``start {session_id, offset}`` where ``offset`` is
the first sample it still holds, and resends from there; the server skips the samples it
already holds (``started.offset`` says how many) and refuses a gap.

Resume anywhere: when the server stores snapshots (``started.snapshots``), another replica
may continue the session from its latest stored snapshot, which can be older than the last
result. The buffer then keeps everything from the latest ``stored`` offset instead (a replica
that dies loses what came after it). Reconnects name the session in the URL
(``?session_id=``) so a load balancer that hashes on it sends every reconnect of a session to
the same replica; a drain (``shutting_down`` with ``resume: true``) is followed by a resume.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import numpy as np

from .errors import S4DError

log = logging.getLogger("s4d.client")

ENCODINGS = ("pcm_s16le", "f32le")
_END = object()
_DEFAULT: Any = object()  # end(): the session's end_timeout
# how long a close waits for the server's closing handshake before dropping the connection
_CLOSE_TIMEOUT = 2.0
# close codes after which resuming makes no sense even without an error message
_NO_RESUME_CLOSE = {1000, 1003, 1008, 1009, 1011, 1013}
# failures of a resume attempt worth another try (session_busy: the server has not yet
# noticed that the old connection is gone)
_RETRY_CODES = {"connection_error", "connection_lost", "timeout", "session_busy",
                "shutting_down", "store_unavailable", "server_busy",
                "http_502", "http_503", "http_504"}


def encode_samples(samples: Any, channels: int, encoding: str) -> tuple[bytes, int]:
    """Interleaved little-endian bytes (channel fastest) and the number of samples (frames).

    Floats are taken as full scale [-1, 1) for pcm_s16le (scaled by 32768, rounded, clipped);
    int16 arrays pass through unscaled for pcm_s16le and are divided by 32768 for f32le.
    """
    a = np.asarray(samples)
    if a.ndim == 1:
        if channels != 1:
            raise ValueError(f"a 1-D array is one channel; this stream has {channels}: pass [n, C]")
        a = a[:, None]
    elif a.ndim != 2 or a.shape[1] != channels:
        raise ValueError(f"expected samples of shape [n, {channels}], got {list(a.shape)}")
    if encoding == "pcm_s16le":
        if a.dtype == np.int16:
            out = a.astype("<i2", copy=False)
        else:
            f = a.astype(np.float64, copy=False)
            if not np.isfinite(f).all():
                raise S4DError("non_finite", "NaN or Inf in the samples")
            out = np.clip(np.rint(f * 32768.0), -32768, 32767).astype("<i2")
    elif encoding == "f32le":
        if a.dtype == np.int16:
            out = (a.astype(np.float32) / 32768.0).astype("<f4")
        else:
            out = a.astype("<f4", copy=False)
            if not np.isfinite(out).all():
                raise S4DError("non_finite", "NaN or Inf in the samples")
    else:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    return np.ascontiguousarray(out).tobytes(), int(a.shape[0])


def ws_url_for(base_url: str, model: str) -> str:
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif not base.startswith(("ws://", "wss://")):
        base = "ws://" + base
    return f"{base}/v1/models/{model}/stream"


class AsyncStreamSession:
    """One streaming session. Use as ``async with client.stream(...) as s:``.

    Attributes: ``session_id``; ``offset`` (samples sent so far = the next sample's offset);
    ``acked_offset`` (samples the server reported consumed); ``frame_size``, ``classes``
    (from the server's ``started``); ``final`` (the final result once ``end`` returned);
    ``events`` (every ``event`` message, in order; ``on_event`` is called with each);
    ``reconnects`` (how many times the connection was resumed).

    Timeouts (seconds): ``open_timeout`` (handshake + ``started``), ``end_timeout`` (the final
    after ``end()``), and the WebSocket keepalive ``ping_interval`` / ``ping_timeout``: a
    server that answers no ping in time is taken as gone (the connection drops, and is
    resumed); a write that the server's flow control holds for ping_interval + ping_timeout
    does the same (the keepalive's own ping would wait behind it).
    Every failure is an S4DError (``bad_response`` for a message that breaks the protocol).
    ``max_reconnects`` bounds the reconnect tries in a row that bring no progress: a resumed
    connection that is lost again before the server acknowledged a new sample (a ``result``,
    ``reset`` or ``stored`` offset) counts against it; progress makes it whole again.
    Once the session is over (its ``final``, an ``error``, a connection lost for good,
    ``close()``), ``send`` / ``reset`` / ``end`` raise S4DError: nothing sent is dropped
    silently (see ``send``).
    """

    def __init__(
        self,
        ws_url: str,
        *,
        sample_rate: int,
        channels: int = 1,
        encoding: str = "pcm_s16le",
        emit_every: int | None = None,
        session_id: str | None = None,
        offset: int = 0,
        on_result: Callable[[dict], Any] | None = None,
        events: bool | dict | None = None,
        on_event: Callable[[dict], Any] | None = None,
        reconnect: bool = True,
        max_reconnects: int = 12,
        resume_buffer_seconds: float = 30.0,
        open_timeout: float = 10.0,
        end_timeout: float | None = 60.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        results_maxlen: int = 100_000,
        headers: dict[str, str] | None = None,
        ssl_context: Any = None,
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.ws_url = ws_url
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.encoding = encoding
        self.emit_every = emit_every
        self.session_id = session_id
        self.offset = int(offset)
        self.acked_offset = int(offset)
        self.frame_size: int | None = None
        self.classes: list[str] | None = None
        self.started: dict | None = None
        self.final: dict | None = None
        self.reconnects = 0
        #: the server stores snapshots (``started.snapshots``); ``stored_offset``: the latest
        #: offset it said is in the session store (the replay buffer keeps samples from there)
        self.snapshots = False
        self.stored_offset = int(offset)
        self.on_result = on_result
        #: ``start.events`` (None: the model's defaults; False: off; a dict overrides);
        #: ``events``: every ``event`` message received, in order; ``on_event`` sees each
        self.events_settings = events
        self.on_event = on_event
        self.events: list[dict] = []
        self.reconnect = reconnect
        self.max_reconnects = max_reconnects
        self.open_timeout = open_timeout
        self.end_timeout = end_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.headers = headers
        self.ssl_context = ssl_context  # for wss:// with a private CA (None: system defaults)
        self._max_buffer = max(1, int(resume_buffer_seconds * self.sample_rate))
        self._buf: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._buf_start = self.offset
        self._buf_samples = 0
        self._ws: Any = None
        self._recv_task: asyncio.Task | None = None
        self._reconnect_task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self._queue: asyncio.Queue | None = None
        self._results_maxlen = results_maxlen
        self._final_fut: asyncio.Future | None = None
        self._reset_waiters: collections.deque[asyncio.Future] = collections.deque()
        self._error: S4DError | None = None
        self._reconnect_tries = 0  # reconnect tries since the server last acknowledged progress
        self._end_sent = False
        self._closing = False
        self._done = False

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> AsyncStreamSession:
        await self.open()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._error is None and not self._closing:
            # end() also when the server already sent its final: it raises if that final
            # left samples out (nothing sent is dropped silently)
            try:
                await self.end()
            finally:  # also on a failure or a cancellation of end(), which then propagates
                await self.close()
        else:
            await self.close()

    async def open(self) -> dict:
        """Connect and send ``start`` (resuming when a session_id was given); returns ``started``.

        ``open_timeout`` bounds the handshake and the wait for ``started`` (S4DError
        ``timeout``, not retried); a refused connection and "try again" answers
        (``server_busy``, HTTP 502/503/504, ...) are retried up to ``max_reconnects`` times.
        A reply that is not a valid ``started`` is S4DError ``bad_response``."""
        loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._queue = asyncio.Queue()
        self._final_fut = loop.create_future()
        async with self._lock:
            ws, started = await self._connect_retrying(resume=self.session_id is not None)
            self._attach(ws, started)
            if self.session_id is not None and started["offset"] > self.offset:
                # resuming by id: the caller's offset was behind what the server holds
                self.offset = self.acked_offset = self._buf_start = started["offset"]
        return started

    async def _connect_retrying(self, resume: bool) -> tuple[Any, dict]:
        """`_connect`, retried with backoff (up to `max_reconnects` times when `reconnect` is
        on) while the answer says "try again" (a busy server, a load balancer with no replica
        ready yet: 502/503/504, a refused connection). A server that did not answer within
        `open_timeout` is not tried again: the caller's timeout is spent."""
        delay = 0.05
        for attempt in range(self.max_reconnects + 1 if self.reconnect else 1):
            try:
                return await self._connect(resume=resume)
            except S4DError as exc:
                if exc.code not in _RETRY_CODES or exc.code == "timeout" or \
                        attempt >= self.max_reconnects or not self.reconnect:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _connect(self, resume: bool, reconnect: bool = False) -> tuple[Any, dict]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import (
            ConnectionClosed,
            InvalidMessage,
            InvalidStatus,
            InvalidURI,
            WebSocketException,
        )

        tls = {"ssl": self.ssl_context} if self.ssl_context and self.ws_url.startswith("wss:") else {}
        url = self.ws_url
        if resume and self.session_id:
            url += ("&" if "?" in url else "?") + "session_id=" + quote(self.session_id, safe="")
        try:
            ws = await connect(
                url,
                **tls,
                open_timeout=self.open_timeout,
                compression=None,
                max_size=2**22,
                proxy=None,
                additional_headers=self.headers,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=_CLOSE_TIMEOUT,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            code, message = _parse_http_error(exc.response.body, status)
            raise S4DError(code, message, status) from exc
        except InvalidURI as exc:
            raise S4DError("bad_url", str(exc)) from exc
        except asyncio.TimeoutError as exc:
            raise S4DError("timeout", f"{self.ws_url}: no WebSocket handshake within "
                           f"{self.open_timeout} s") from exc
        except OSError as exc:
            raise S4DError("connection_error", f"{self.ws_url}: {exc}") from exc
        except InvalidMessage as exc:  # no HTTP answer: the connection closed, or garbage
            reason = exc.__cause__ or exc
            code = "connection_error" if isinstance(reason, EOFError) else "bad_response"
            raise S4DError(code, f"{self.ws_url}: no valid handshake response: {reason}") \
                from exc
        except WebSocketException as exc:  # a refused upgrade, a redirect loop, bad headers
            raise S4DError("bad_response", f"{self.ws_url}: WebSocket handshake failed: "
                           f"{type(exc).__name__}: {exc}") from exc
        start: dict[str, Any] = {
            "type": "start",
            "sample_rate": self.sample_rate,
            "encoding": self.encoding,
            "channels": self.channels,
        }
        if self.emit_every is not None:
            start["emit_every"] = int(self.emit_every)
        if self.events_settings is not None:
            start["events"] = self.events_settings
        if resume:
            start["session_id"] = self.session_id
            start["offset"] = int(self._buf_start)
        with contextlib.suppress(ConnectionClosed):
            # the server may refuse (unknown_model, ...) before reading start: its error
            # message is still queued for recv() below
            await ws.send(json.dumps(start))
        try:
            raw = await asyncio.wait_for(ws.recv(), self.open_timeout)
        except ConnectionClosed as exc:
            raise S4DError(
                "connection_lost", f"closed during start: {exc}", _close_code(ws)
            ) from exc
        except asyncio.TimeoutError as exc:
            await ws.close()
            raise S4DError("timeout", f"no reply to start within {self.open_timeout} s") \
                from exc
        try:
            msg = _loads(raw)
            if msg.get("type") == "error":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.wait_closed(), _CLOSE_TIMEOUT)
                raise _server_error(msg, _close_code(ws))
            if msg.get("type") != "started":
                raise S4DError("bad_response", f"expected 'started', got {_clip(raw)}")
            _check_started(msg)
            if reconnect and msg["offset"] > self.offset:
                # the server cannot hold more of this session than this client sent
                raise S4DError("bad_response", f"'started' offset {msg['offset']} is beyond "
                               f"the {self.offset} samples sent")
        except S4DError:
            with contextlib.suppress(Exception):
                await ws.close()
            raise
        return ws, msg

    def _attach(self, ws: Any, started: dict) -> None:
        self._ws = ws
        self.started = started
        self.session_id = started["session_id"]
        self.frame_size = started["frame_size"]
        self.classes = list(started["classes"])
        self.snapshots = bool(started.get("snapshots", False))
        self._recv_task = asyncio.get_running_loop().create_task(self._recv_loop(ws))

    async def close(self) -> None:
        """Close the connection without ``end``: the server keeps the session for its idle
        TTL, so it can be resumed with ``session_id`` and ``offset``. Afterwards ``send``,
        ``reset`` and ``end`` raise S4DError ``closed``.

        A cancellation of the task running close() is not swallowed: the connection is
        dropped (without the closing handshake when that was under way), the receiver
        stopped, and the CancelledError raised."""
        self._closing = True
        self._done = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        recv = self._recv_task
        try:
            if self._ws is not None:
                with contextlib.suppress(Exception):  # not CancelledError (BaseException)
                    await self._ws.close()
            if recv is not None and not recv.done():
                # asyncio.wait, not wait_for: the receiver's own end (it may have been
                # cancelled elsewhere) is not raised here, a cancellation of this task is
                await asyncio.wait({recv}, timeout=2.0)
        finally:
            if recv is not None and not recv.done():  # timed out, or this task cancelled
                recv.cancel()
                self._abort_connection()
            self._finish(None)

    # ------------------------------------------------------------------ sending
    async def send(self, samples: Any) -> None:
        """Send samples: [n] (one channel) or [n, channels]; floats in [-1, 1) or int16.

        Samples sent while the connection is down (and will be resumed) are kept and resent.
        Once the session is over (the server sent its ``final``, e.g. early when it shuts
        down; an ``error``; the connection was lost for good; ``close()``) it raises
        S4DError, with the server's error code or ``closed``: nothing is dropped silently."""
        data, n = encode_samples(samples, self.channels, self.encoding)
        self._check()  # also for nothing: a send after the session ended is an error
        if n == 0:
            return
        await self._send_encoded(data, n)

    async def _send_encoded(self, data: bytes, n: int) -> None:
        from websockets.exceptions import ConnectionClosed

        self._check()
        if self._end_sent:
            raise RuntimeError("send() after end()")
        async with self._lock:
            self._check()
            self._buf.append((self.offset, n, data))
            self._buf_samples += n
            self.offset += n
            self._trim()
            with contextlib.suppress(ConnectionClosed):
                await self._write(self._ws, data)
            # a dropped connection is noticed by the receiver, which resumes and resends

    async def _write(self, ws: Any, data: str | bytes) -> None:
        """``ws.send``, held by the server's flow control for at most ping_interval +
        ping_timeout: a server that reads nothing for that long would not have answered a
        ping either (and the keepalive cannot tell, its ping waits behind the data), so the
        connection is dropped and the receiver resumes (ConnectionClosed: to the caller)."""
        if self.ping_interval is None or self.ping_timeout is None:
            await ws.send(data)
            return
        try:
            await asyncio.wait_for(ws.send(data), self.ping_interval + self.ping_timeout)
        except asyncio.TimeoutError:
            log.info("the server read nothing for %.0f s: dropping the connection",
                     self.ping_interval + self.ping_timeout)
            if ws.transport is not None:
                ws.transport.abort()

    def _trim(self) -> None:
        # forget what the server acknowledged (stored, when it keeps snapshots: another
        # replica resumes from the latest stored one), and the oldest beyond the bound
        safe = min(self.acked_offset, self.stored_offset) if self.snapshots else self.acked_offset
        while self._buf:
            start, n, _ = self._buf[0]
            if start + n <= safe or self._buf_samples - n >= self._max_buffer:
                self._buf.popleft()
                self._buf_samples -= n
                self._buf_start = start + n
            else:
                break
        if not self._buf:
            self._buf_start = self.offset

    async def reset(self, timeout: float | None = 30.0) -> int:
        """Close the current segment (reported as a ``result`` with ``segment_end``), zero
        the state; returns the server's offset at the reset. No answer within ``timeout``
        seconds: S4DError ``timeout`` (the session goes on)."""
        from websockets.exceptions import ConnectionClosed

        self._check()
        fut = asyncio.get_running_loop().create_future()
        async with self._lock:
            self._reset_waiters.append(fut)
            with contextlib.suppress(ConnectionClosed):
                await self._write(self._ws, json.dumps({"type": "reset"}))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as exc:
            with contextlib.suppress(ValueError):
                self._reset_waiters.remove(fut)
            raise S4DError("timeout", f"no reply to reset within {timeout} s") from exc

    async def end(self, timeout: float | None | object = _DEFAULT) -> dict:
        """Flush the remainder; returns the ``final`` result. The session is then closed.

        ``timeout`` (default: the session's ``end_timeout``, 60 s): seconds to wait for the
        final; past it the session is closed and S4DError ``timeout`` raised (``results()``
        raises it too). A final that came before ``end`` (a server shutting down sends one)
        is returned when it covers every sample sent; else S4DError ``closed``. A session
        already over without a final (an error, close()) raises as ``send`` does."""
        from websockets.exceptions import ConnectionClosed

        if timeout is _DEFAULT:
            timeout = self.end_timeout
        if self.final is not None:
            if self.final["offset"] < self.offset:  # an early final: it left samples out
                raise S4DError(
                    "closed",
                    f"the session already ended: the server's final result covers "
                    f"{self.final['offset']} of the {self.offset} samples sent; the rest "
                    f"were not processed",
                )
            return self.final
        self._check()
        if not self._end_sent:
            async with self._lock:
                self._end_sent = True
                with contextlib.suppress(ConnectionClosed):
                    await self._write(self._ws, json.dumps({"type": "end"}))
        try:
            final = await asyncio.wait_for(asyncio.shield(self._final_fut), timeout)
        except asyncio.TimeoutError as exc:
            # the server's error, when it sent one and has not closed yet
            err = self._error or S4DError("timeout", f"no final result within {timeout} s")
            self._finish(err)
            await self.close()
            raise err from exc
        self._done = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.wait_closed(), _CLOSE_TIMEOUT)
        return final

    # ------------------------------------------------------------------ receiving
    async def results(self) -> AsyncIterator[dict]:
        """Every ``result`` (and lastly the ``final``) in order. One consumer at a time."""
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # later iterators end at once
                return
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)
                raise item
            yield item
            if item.get("type") == "final":
                return

    def _fail_results(self, exc: BaseException) -> None:
        """Make a waiting results() iterator raise ``exc`` (a feeder task failed)."""
        self._put(exc)

    def _put(self, item: Any) -> None:
        q = self._queue
        if q is None:
            return
        while isinstance(item, dict) and q.qsize() >= self._results_maxlen:
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
        q.put_nowait(item)

    async def _recv_loop(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    continue  # not part of the protocol: ignored
                if self.final is not None:
                    continue  # the session is over: a second final (or anything) is ignored
                msg = _loads(raw)
                kind = msg.get("type")
                if kind in ("result", "final"):
                    _check_prediction(msg, self.offset)
                    self._acked(msg["offset"])
                    self._put(msg)
                    if self.on_result is not None:
                        try:
                            self.on_result(msg)
                        except Exception:  # noqa: BLE001 - a user callback
                            log.exception("on_result callback failed")
                    if kind == "final":
                        self.final = msg
                        if not self._final_fut.done():
                            self._final_fut.set_result(msg)
                elif kind == "event":
                    _check_event(msg, self.offset)
                    self.events.append(msg)
                    if self.on_event is not None:
                        try:
                            self.on_event(msg)
                        except Exception:  # noqa: BLE001 - a user callback
                            log.exception("on_event callback failed")
                elif kind == "reset":
                    off = _check_offset(msg, self.offset)
                    self._acked(off)
                    if self._reset_waiters:
                        w = self._reset_waiters.popleft()
                        if not w.done():
                            w.set_result(off)
                elif kind == "stored":
                    off = _check_offset(msg, self.offset)
                    if off > self.stored_offset:
                        self.stored_offset = off
                        self._reconnect_tries = 0  # progress
                elif kind == "error" and msg.get("code") == "shutting_down" and msg.get("resume"):
                    pass  # drained with the session stored: resume (below) on another replica
                elif kind == "error":  # every other error ends the stream
                    self._error = _server_error(msg, None)
                    break
                # any other type: a newer server's message, ignored
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed message: the session fails now
            err = exc if isinstance(exc, S4DError) else S4DError("bad_response", str(exc))
            if ws is self._ws:
                self._finish(err)
            await _close_draining(ws)
            return
        if self._error is not None:  # the server's error: its close (and code) comes next;
            # a server that does not close is not waited for beyond the close timeout
            await _drain(ws, _CLOSE_TIMEOUT)
            await _close_draining(ws)
        if ws is not self._ws:
            return
        code = _close_code(ws)
        if self._error is not None:
            if self._error.status is None:
                self._error.status = code
            # a final sent before the error (shutting_down) still ends the session normally
            self._finish(None if self.final is not None else self._error)
        elif self.final is not None or self._closing:
            self._finish(None)
        elif self.reconnect and code not in _NO_RESUME_CLOSE and self.session_id:
            self._reconnect_task = asyncio.get_running_loop().create_task(self._resume())
        else:
            self._finish(
                S4DError("connection_lost", f"the server closed the stream ({code})", code)
            )

    def _acked(self, offset: int) -> None:
        if offset > self.acked_offset:
            self.acked_offset = offset
            self._reconnect_tries = 0  # progress: the reconnect budget is whole again

    async def _resume(self) -> None:
        from websockets.exceptions import ConnectionClosed

        delay = 0.05
        last: S4DError | None = None
        async with self._lock:
            # max_reconnects bounds the tries in a row that bring no progress: a connection
            # that drops again before the server acknowledged a new sample counts against
            # the same budget as a failed try (else a server that accepts the resume and
            # then drops every connection would be reconnected to forever)
            while self._reconnect_tries < self.max_reconnects:
                if self._closing:
                    return
                self._reconnect_tries += 1
                try:
                    ws, started = await self._connect(resume=True, reconnect=True)
                except S4DError as exc:
                    last = exc
                    if exc.code not in _RETRY_CODES:
                        self._finish(exc)
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                self.reconnects += 1
                held = started["offset"]
                if held > self.acked_offset:
                    self.acked_offset = held  # the server holds these: never needed again
                resend = list(self._buf)
                self._attach(ws, started)
                # a reset sent on the lost connection may or may not have happened
                while self._reset_waiters:
                    w = self._reset_waiters.popleft()
                    if not w.done():
                        w.set_exception(
                            S4DError("connection_lost", "the connection dropped during reset")
                        )
                try:
                    # the start message said resending begins at _buf_start: the server
                    # skips the held duplicates itself
                    for _start, _n, data in resend:
                        await self._write(ws, data)
                    if self._end_sent:
                        await self._write(ws, json.dumps({"type": "end"}))
                except ConnectionClosed:
                    pass  # the new receiver resumes again
                self._trim()
                return
        self._finish(
            S4DError(
                "connection_lost",
                f"could not resume after {self.max_reconnects} tries without progress"
                + (f": {last}" if last else ": every resumed connection dropped again"),
                last.status if last else _close_code(self._ws),
            )
        )

    def _finish(self, error: S4DError | None) -> None:
        if error is not None and self._error is None:
            self._error = error
        self._done = True
        if self._final_fut is not None and not self._final_fut.done():
            self._final_fut.set_exception(
                error or S4DError("closed", "the session closed without a final result")
            )
            self._final_fut.exception()  # mark retrieved
        while self._reset_waiters:
            w = self._reset_waiters.popleft()
            if not w.done():
                w.set_exception(error or S4DError("closed", "the session closed"))
        self._put(error if error is not None else _END)

    def _check(self) -> None:
        """Raise unless samples and messages can still go out: S4DError once the session is
        over (see `_ended`), RuntimeError before open()."""
        ended = self._ended()
        if ended is not None:
            raise ended
        if self._ws is None:
            raise RuntimeError("the session is not open: use 'async with' or await open()")

    def _ended(self) -> S4DError | None:
        """Why the session is over, as the S4DError that a send / reset / end now raises;
        None while it goes on (a connection being resumed included)."""
        err = self._error
        if err is not None:
            return S4DError(err.code, f"the session already ended: {err.message}", err.status)
        if self.final is not None:
            return S4DError("closed", "the session already ended: final result received "
                            f"(offset {self.final['offset']})"
                            + ("" if self._end_sent else ", sent by the server before end()"))
        if self._closing:
            return S4DError("closed", "the session already ended: closed by close()")
        if self._done:
            return S4DError("closed", "the session already ended")
        return None

    # ------------------------------------------------------------------ testing aid
    def _abort_connection(self) -> None:
        """Drop the TCP connection abruptly (no close handshake), as a network failure would."""
        if self._ws is not None and self._ws.transport is not None:
            self._ws.transport.abort()


async def _drain(ws: Any, timeout: float) -> None:
    """Read (and drop) what still comes until the connection is closed, for at most
    `timeout` seconds. Unread messages would fill the library's queue, and then it stops
    reading the socket, closing frame included."""
    async def read_all() -> None:
        async for _ in ws:
            pass

    with contextlib.suppress(Exception):
        await asyncio.wait_for(read_all(), timeout)


async def _close_draining(ws: Any) -> None:
    """Close the connection, reading what comes meanwhile (see `_drain`)."""
    closing = asyncio.ensure_future(ws.close())
    await _drain(ws, _CLOSE_TIMEOUT + 0.5)
    with contextlib.suppress(Exception):
        await closing


def _close_code(ws: Any) -> int | None:
    try:
        return ws.close_code
    except Exception:  # noqa: BLE001
        return None


def _clip(x: Any, n: int = 200) -> str:
    text = repr(x)
    return text if len(text) <= n else text[:n] + "..."


def _loads(raw: str | bytes) -> dict:
    """A server message: a JSON object (S4DError ``bad_response`` for anything else)."""
    if isinstance(raw, bytes):
        raise S4DError("bad_response", f"expected a JSON text message, got binary {_clip(raw)}")
    try:
        msg = json.loads(raw)
    except ValueError as exc:
        raise S4DError("bad_response", f"not JSON ({exc}): {_clip(raw)}") from None
    if not isinstance(msg, dict):
        raise S4DError("bad_response", f"expected a JSON object, got {_clip(raw)}")
    return msg


def _server_error(msg: dict, status: int | None) -> S4DError:
    """The S4DError of an ``error`` message; a missing or odd code reads ``error``."""
    code, message = msg.get("code"), msg.get("message")
    if not isinstance(code, str) or not code:
        code = "error"
    if not isinstance(message, str) or not message:
        message = f"the server reported an error: {_clip(msg)}"
    return S4DError(code, message, status)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(msg: dict, what: str) -> S4DError:
    return S4DError("bad_response", f"{msg.get('type')!r} message with {what}: {_clip(msg)}")


def _check_started(msg: dict) -> None:
    """The fields of ``started`` that the client relies on (server/PROTOCOL.md)."""
    if not isinstance(msg.get("session_id"), str) or not msg["session_id"]:
        raise _bad(msg, "no session_id string")
    if not _is_int(msg.get("offset")) or msg["offset"] < 0:
        raise _bad(msg, "an offset that is not an integer >= 0")
    for name in ("frame_size", "sample_rate", "channels"):
        if not _is_int(msg.get(name)) or msg[name] <= 0:
            raise _bad(msg, f"a {name} that is not an integer > 0")
    classes = msg.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise _bad(msg, "classes that are not a list of strings")


def _check_offset(msg: dict, sent: int) -> int:
    """A message's ``offset``: an integer in 0..sent (no server acknowledges more samples
    than this client sent)."""
    off = msg.get("offset")
    if not _is_int(off) or not 0 <= off <= sent:
        raise _bad(msg, f"an offset that is not an integer in 0..{sent} (samples sent)")
    return off


def _check_prediction(msg: dict, sent: int) -> None:
    """``result`` / ``final``: offset, label (str, or null before any prediction) and
    probabilities ({class: number}, or null)."""
    _check_offset(msg, sent)
    if "label" not in msg or "probabilities" not in msg:
        raise _bad(msg, "no label or no probabilities")
    label, probs = msg["label"], msg["probabilities"]
    if label is not None and not isinstance(label, str):
        raise _bad(msg, "a label that is not a string")
    if probs is not None and (not isinstance(probs, dict)
                              or not all(_is_number(p) for p in probs.values())):
        raise _bad(msg, "probabilities that are not {class: number}")


def _check_event(msg: dict, sent: int) -> None:
    _check_offset(msg, sent)
    if not isinstance(msg.get("label"), str):
        raise _bad(msg, "a label that is not a string")
    if not _is_number(msg.get("probability")):
        raise _bad(msg, "a probability that is not a number")


def _parse_http_error(body: bytes | None, status: int) -> tuple[str, str]:
    """(code, message) of an HTTP error body ``{"error": {"code", "message"}}``; anything
    else reads ``http_<status>`` with the body's start."""
    text = (body or b"").decode("utf-8", "replace")
    try:
        err = json.loads(text or "{}").get("error", {})
        code, message = err.get("code"), err.get("message")
    except Exception:  # noqa: BLE001 - not our JSON
        return f"http_{status}", text[:500]
    if not isinstance(code, str) or not code:
        code = f"http_{status}"
    return code, message if isinstance(message, str) else text[:500]
