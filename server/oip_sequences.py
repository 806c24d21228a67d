"""Triton sequences over OIP (sequence_id / sequence_start / sequence_end) as streaming sessions.

A sequence is an engine session like a WebSocket stream's. Each request attaches to it, feeds
its samples, flushes (the trailing partial frame runs through the exact recurrence, so the
answer is the prediction after every sample sent so far, equal to the batch prediction of the
concatenation) and detaches again; `sequence_end` ends it instead. Between requests the session
is detached, so the engine's idle TTL expires abandoned sequences exactly as it expires
abandoned WebSocket sessions.

Where the sequence id -> session mapping lives: nowhere. The session id is derived from
(API key, model, sequence id), prefixed with the engine that holds it (`e<i>-q<hash>`), so
every front-end process (`--workers W`), and any replica that restores it from a session
store, finds the same session with no shared table to keep in step. The key in the hash
gives every API key its own sequence-id namespace (two tenants may both use sequence 1);
the engine also refuses a session to any other key.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import numpy as np

from server.auth import KeyInfo
from server.errors import ApiError, StreamError
from server.frontend.client import EngineUnavailable, RemoteModel, StreamHandle, key_engine
from server.state import ServerState

#: stream error code -> (HTTP status, OIP error code) for answers to sequence requests
_STATUS = {
    "unknown_session": (400, "unknown_sequence"),
    "session_exists": (409, "sequence_exists"),
    "session_busy": (409, "sequence_busy"),
    "session_forbidden": (403, "forbidden"),
    "quota_exceeded": (429, "quota_exceeded"),
    "server_busy": (503, "server_busy"),
    "store_unavailable": (503, "server_busy"),
    "shutting_down": (503, "server_busy"),
    "not_streamable": (400, "not_streamable"),
    "session_moved": (409, "sequence_busy"),
}
#: how long a request waits for another request of its sequence (on another front-end) to end
BUSY_WAIT_S = 10.0


@dataclass
class SequenceResult:
    consumed: int  # samples of the sequence run so far (a multiple of the model's patch)
    probs: np.ndarray | None  # probabilities after them; None before the first whole patch


def sequence_session_id(key: str | None, model: str, sequence_id: int | str,
                        engines: int, quota: bool = False) -> str:
    """The session id of a sequence: the same from every front-end; int 7 and "7" differ.
    A key with a session quota (`quota`) keeps its sequences on its own engine, where its
    sessions are counted (frontend.client.key_engine)."""
    kind = "s" if isinstance(sequence_id, str) else "i"
    h = hashlib.sha256(f"{key or ''}\0{model}\0{kind}:{sequence_id}".encode()).hexdigest()
    engine = (key_engine(key, engines) if quota and key is not None
              else int(h[:8], 16) % max(1, engines))
    return f"e{engine}-q{h[:32]}"


def _describe(sequence_id: int | str) -> str:
    """The id as error messages name it: a long one shortened, so that the message (cut at
    500 characters) still says what is wrong."""
    text = repr(sequence_id)
    return f"sequence_id {text if len(text) <= 64 else text[:60] + '...'}"


class OipSequences:
    """Feeds OIP sequence requests into engine sessions, one request of a sequence at a time."""

    def __init__(self, st: ServerState):
        self.st = st
        #: per sequence: its lock and how many requests hold or wait for it (the entry goes
        #: when the last leaves: a lock dropped while a woken waiter had not yet taken it let a
        #: third request make a new one and run beside that waiter)
        self._locks: dict[str, list] = {}

    async def infer(self, lm: RemoteModel, sequence_id: int | str, start: bool, end: bool,
                    rows: np.ndarray, key: KeyInfo | None,
                    samples_sent: int | None = None) -> SequenceResult:
        """Feed `rows` [n, C] float32; the probabilities after them (flushed; `end`: final).
        `samples_sent`: what the client has sent before; a request whose sequence holds
        another count is refused unapplied (409), so a chunk retried after a timeout (its
        first try was applied) is not applied twice."""
        pool = self.st.client
        sid = sequence_session_id(key.name if key else None, lm.name, sequence_id,
                                  len(pool.clients),
                                  quota=key is not None and key.max_sessions is not None)
        entry = self._locks.setdefault(sid, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:  # this front-end serves a sequence's requests in arrival order
                return await self._serve(lm, sid, sequence_id, start, end, rows, key,
                                         samples_sent)
        except StreamError as err:
            status, code = _STATUS.get(err.code, (500, "internal"))
            raise ApiError(status, code, _message(err, sequence_id, lm.name)) from None
        except EngineUnavailable as exc:
            raise ApiError(503, "server_busy", f"{exc}; try again shortly",
                           headers={"Retry-After": "1"}) from exc
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._locks.get(sid) is entry:
                del self._locks[sid]

    async def _serve(self, lm: RemoteModel, sid: str, sequence_id, start: bool, end: bool,
                     rows: np.ndarray, key: KeyInfo | None,
                     samples_sent: int | None) -> SequenceResult:
        h = await self._attach(lm, sid, start, key)
        if samples_sent is not None and h.received != samples_sent:
            await self._detach(h)
            raise ApiError(409, "sequence_samples_mismatch", (
                f"{_describe(sequence_id)} of model {lm.name!r} has received {h.received} "
                f"samples, not {samples_sent} (sequence_samples_sent); nothing of this request "
                "was applied (a chunk sent before with this count, whose answer was lost, "
                "was applied: go on from the server's count)"))
        ended = False
        try:
            h.push(rows, asyncio.get_running_loop().time())
            reply = await h.client.flush(h, end=end)
            ended = end
        finally:
            if not ended and not h.closed:
                await self._detach(h)
        probs = reply.get("probs")
        return SequenceResult(int(reply["consumed"]),
                              None if probs is None else np.asarray(probs, np.float32))

    async def _attach(self, lm: RemoteModel, sid: str, start: bool,
                      key: KeyInfo | None) -> StreamHandle:
        """Open (start) or resume the session; a resume waits while another front-end still
        holds it (a request of the same sequence there, or its detach on the way)."""
        pool = self.st.client
        kw = dict(offset=None, encoding="f32le", emit_every=0, on_result=_ignore,
                  on_closed=_ignore, key=key.name if key else None,
                  key_max=key.max_sessions if key else None)
        if start:
            return await pool.open(lm, session_id=None, create_id=sid, **kw)
        deadline = asyncio.get_running_loop().time() + BUSY_WAIT_S
        while True:
            try:
                return await pool.open(lm, session_id=sid, **kw)
            except StreamError as err:
                if err.code != "session_busy" or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.005)

    async def _detach(self, h: StreamHandle) -> None:
        """Detach, and with several front-ends wait until the engine has done it, so that the
        sequence's next request, wherever it lands, finds the session free."""
        h.client.detach(h)
        if self.st.settings.workers > 1 and not h.local_len:
            try:  # ops reach the engine in order: its answer to a ping comes after the detach
                await asyncio.wait_for(h.client.request({"op": "ping"}, stale_ok=True),
                                       h.client.engine_timeout_s)
            except (asyncio.TimeoutError, EngineUnavailable):
                pass  # the next request waits out session_busy instead


def _message(err: StreamError, sequence_id, model: str) -> str:
    what = _describe(sequence_id)
    if err.code == "unknown_session":
        return (f"{what} of model {model!r} is not open (send sequence_start first; it may "
                "have ended, or expired after the idle TTL)")
    if err.code == "session_exists":
        return f"{what} is already started; end it (sequence_end) before starting it again"
    if err.code == "session_busy":
        return f"{what}: another request of this sequence is still being served"
    if err.code == "session_forbidden":
        return f"{what} belongs to another API key"
    return f"{what}: {err.message}"


def _ignore(*_args) -> None:
    pass
