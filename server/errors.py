"""Error codes of the wire protocol (PROTOCOL.md) and the exceptions that carry them."""

from __future__ import annotations

import re

from server.request_id import error_body

#: WebSocket error code -> close code (PROTOCOL.md table)
WS_CLOSE_CODES: dict[str, int] = {
    "bad_json": 1003,
    "unknown_type": 1003,
    "not_started": 1008,
    "already_started": 1008,
    "bad_start": 1003,
    "bad_encoding": 1003,
    "bad_sample_rate": 1003,
    "bad_channels": 1003,
    "non_finite": 1003,
    "partial_sample": 1003,
    "too_big": 1009,
    "unknown_model": 1008,
    "not_streamable": 1008,
    "unknown_session": 1008,
    "session_busy": 1008,
    "offset_gap": 1008,
    "session_moved": 1008,
    "snapshot_corrupt": 1008,
    "snapshot_version": 1008,
    "snapshot_model_mismatch": 1008,
    "snapshot_state_mismatch": 1008,
    "server_busy": 1013,
    "quota_exceeded": 1013,
    "session_forbidden": 1008,
    "timeout": 1008,
    "slow_consumer": 1008,
    "store_unavailable": 1013,
    "shutting_down": 1001,
    "internal": 1011,
    # access control (server/auth.py): refused right after the handshake, before `start`
    "unauthorized": 4401,
    "forbidden": 4403,
}

# `<_io.BytesIO object at 0x7f...>`, `<function f at 0x...>`: reprs that leak heap addresses
_REPR_AT = re.compile(r"<[^<>]{0,200}? at 0x[0-9a-fA-F]+>")
_HEX_ADDR = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def safe_message(text: str, limit: int = 500) -> str:
    """An error message fit for a client: no object reprs or heap addresses, bounded length.
    Library exceptions (libsndfile, numpy) embed `repr(file_object)`; that is internal."""
    text = _HEX_ADDR.sub("0x?", _REPR_AT.sub("<input>", str(text)))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StreamError(Exception):
    """A WebSocket protocol error: sent as `{"type": "error"}`, then the socket is closed."""

    def __init__(self, code: str, message: str):
        message = safe_message(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = WS_CLOSE_CODES.get(code, 1011)

    def to_message(self) -> dict:
        return {"type": "error", "code": self.code, "message": self.message}


#: exit status of `s4d serve` (and of an engine process) when a model fails to load and
#: `exit_on_load_error` is on; 3 is uvicorn's for a port it cannot bind
LOAD_ERROR_EXIT = 4


class ApiError(Exception):
    """An HTTP error answered as `{"error": {"code", "message", "request_id"}}`."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        message = safe_message(message)
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def to_body(self) -> dict:
        return error_body(self.code, self.message)
