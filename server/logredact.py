"""Session ids out of the server's logs: uvicorn's access and WebSocket lines carry request
paths, and a session id (the resume credential, PROTOCOL.md) travels in
`/v1/models/{name}/stream?session_id=ID` and in `/v1/sessions/{ID}...`. A logging filter
replaces each id with the short hash the engine logs (`session=<10 hex>`), so lines still
correlate and never hold a usable id."""

from __future__ import annotations

import hashlib
import logging
import re

_QUERY_ID = re.compile(r"((?:^|[?&])session_id=)([^&\s\"#]+)")
_PATH_ID = re.compile(r"(/v1/sessions/)(?!restore\b)([^/?\s\"#]+)")
#: the loggers whose lines carry request paths
LOGGERS = ("uvicorn.access", "uvicorn.error")


def short_id(session_id: str) -> str:
    """The engine's short form of a session id (server/engine/model_engine.py short_id)."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:10]


def redact(text: str) -> str:
    text = _QUERY_ID.sub(lambda m: m.group(1) + "~" + short_id(m.group(2)), text)
    return _PATH_ID.sub(lambda m: m.group(1) + "~" + short_id(m.group(2)), text)


class SessionIdFilter(logging.Filter):
    """Redacts session ids in a record's string arguments (uvicorn's access formatter unpacks
    `args` by position, so the tuple keeps its shape)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and "session" in record.msg:
            record.msg = redact(record.msg)
        return True


def install() -> None:
    """Add the filter to uvicorn's loggers (once; after uvicorn.Config set its logging up)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SessionIdFilter) for f in logger.filters):
            logger.addFilter(SessionIdFilter())
