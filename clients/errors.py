"""The one exception type of the client library."""

from __future__ import annotations


class S4DError(Exception):
    """An error reported by the server, or met by the client while talking to it.

    `code` is the wire protocol's error code (``unknown_model``, ``bad_input``, ...; an
    error answer without a usable code reads ``http_<status>`` for REST, ``error`` for a
    stream) or, for failures that never reached the server, a client-side code
    (``connection_error``, ``connection_lost``, ``timeout``, ``bad_response`` (an answer
    that breaks server/PROTOCOL.md), ``bad_url``, ``closed`` (a stream session already over:
    its final came, or close() was called; the message says which), ``non_finite``,
    ``bad_input``). A send / reset / end on a session that an error ended raises that
    error's code.
    `status` is the HTTP status for REST calls, the WebSocket close code for streams, and
    None for client-side failures. `request_id` is the server's ``X-Request-ID`` of a REST
    answer (the key to its logs; quote it when reporting a problem), else None.
    """

    def __init__(self, code: str, message: str, status: int | None = None,
                 request_id: str | None = None) -> None:
        where = ", ".join(x for x in (f"status {status}" if status else "",
                                      f"request {request_id}" if request_id else "") if x)
        super().__init__(f"{code}: {message}" + (f" ({where})" if where else ""))
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id

    def __reduce__(self):  # keep it picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.code, self.message, self.status, self.request_id))
