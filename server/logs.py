"""The server's log output: uvicorn-style text lines (the default) or one JSON object per line
(`--log-format json`) for log pipelines, each record of an HTTP request tagged with its
X-Request-ID (server/request_id.py), uvicorn's access lines included. A few lines of stdlib
`json` rather than a dependency: the fields are fixed and nothing else needs formatting."""

from __future__ import annotations

import json
import logging
import time

from server import request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class RequestIdFilter(logging.Filter):
    """`record.request_id`: the id of the HTTP request whose task logs it, else None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.current.get()
        return True


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "process", "message", "request_id"?, "exc"?} per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            doc["request_id"] = rid
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """The s4d loggers at `level`; text: a root handler on stderr as `logging.basicConfig`
    makes one (nothing if the root has handlers already); json: the root's only handler is a
    JSON one (uvicorn then leaves its own handlers out: `uvicorn_log_config`)."""
    root = logging.getLogger()
    if fmt == "json":
        handler = logging.StreamHandler()
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(JsonFormatter())
        for other in list(root.handlers):  # one JSON stream: no text lines in it
            root.removeHandler(other)
        root.addHandler(handler)
        root.setLevel(level.upper())
    elif not root.handlers:
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    logging.getLogger("s4d").setLevel(level.upper())


def uvicorn_log_config(fmt: str):
    """uvicorn.Config's `log_config`: its own dictConfig for text (its usual lines), None for
    json (its loggers then propagate to the root's JSON handler)."""
    if fmt == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
