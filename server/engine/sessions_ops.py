"""Engine ops that move sessions: `snapshot` (bytes of a live or stored session), `restore`
(install snapshot bytes here) and `park` (drain: store a session, close it here, keep it in
the store). The front-end's operator routes (server/sessions_api.py) and its drain send them.

Replies: `snapshot` -> {"data": uint8 array}; `restore` -> {"session_id", "model", "received",
"consumed"}; `park` -> {"received"}; errors as {"error": code, "message"} (PROTOCOL.md codes).
"""

from __future__ import annotations

import logging

import numpy as np

from server import snapshot as snapshots
from server.errors import StreamError

log = logging.getLogger("s4d.engine")


def start_persistence(engine):
    """The engine's Persistence over the store named by `settings.session_store`."""
    from server.engine.persistence import Persistence, owner_name
    from server.session_store import open_store

    p = Persistence(open_store(engine.settings.session_store), settings=engine.settings,
                    owner=owner_name(engine.index, engine.epoch), metrics=engine.metrics,
                    models=engine.models)
    p.start()
    return p


def _find(engine, session_id: str):
    for me in engine.models:
        if me.streamable:
            s = me.sessions.get(session_id)
            if s is not None:
                return me, s
    return None, None


async def run_session_op(engine, owner: int, kind: str, op: dict, arrays: list) -> None:
    req = op.get("req")
    data = None
    if kind == "restore":  # copy out of the message's buffer before any await
        data = bytes(np.asarray(arrays[op["data"]], np.uint8).tobytes())
    try:
        if kind == "snapshot":
            reply = await _snapshot(engine, str(op["session_id"]))
        elif kind == "restore":
            reply = await _restore(engine, data, op.get("session_id"))
        else:
            reply = await _park(engine, op)
    except StreamError as err:
        reply = {"error": err.code, "message": err.message}
    except Exception as exc:
        log.exception("engine: %s failed", kind)
        reply = {"error": "internal", "message": type(exc).__name__}
    engine.outbox.reply(owner, {"req": req, **reply})


async def _snapshot(engine, session_id: str) -> dict:
    me, s = _find(engine, session_id)
    if s is not None:
        blob = await me.snapshot(s)
    elif engine.persistence is not None:
        blob = await engine.persistence.stored_snapshot(session_id)
    else:
        blob = None
    if blob is None:
        raise StreamError("unknown_session", f"no session {session_id!r} (live or stored)")
    return {"data": np.frombuffer(blob, np.uint8)}


async def _restore(engine, data: bytes, session_id: str | None) -> dict:
    try:
        meta = snapshots.read_metadata(data)
    except snapshots.SnapshotError as exc:
        raise StreamError(exc.code, exc.message) from exc
    if session_id is not None and meta.get("session_id") != session_id:
        raise StreamError("snapshot_corrupt", f"the snapshot is of session "
                          f"{meta.get('session_id')!r}, not {session_id!r}")
    me = engine.by_name.get(meta.get("model", ""))
    if me is None:
        raise StreamError("snapshot_model_mismatch",
                          f"model {meta.get('model')!r} is not served here")
    info = await me.restore(data, -1)
    if engine.persistence is not None:
        s = me.sessions.get(info["session_id"])
        if s is not None:
            await engine.persistence.adopt(me, s)
    return {"session_id": info["session_id"], "model": me.name, "received": info["received"],
            "consumed": info["consumed"]}


async def _park(engine, op: dict) -> dict:
    me = engine.models[op["model"]]
    s = me.session_at(op["slot"], op["gen"])
    if s is None:
        raise StreamError("unknown_session", "the session is closed")
    if engine.persistence is None:
        raise StreamError("store_unavailable", "no session store is configured")
    return {"received": await engine.persistence.park(me, s)}
