"""Python client for s4d-serve: REST predictions and WebSocket streaming with resume.

Speaks only the wire protocol in server/PROTOCOL.md; imports nothing from model/ or server/.
"""

from .client import AsyncS4DClient, Prediction, S4DClient, StreamSession
from .errors import S4DError
from .io import conform, read_file, resample
from .stream import AsyncStreamSession, encode_samples

__all__ = [
    "AsyncS4DClient",
    "AsyncStreamSession",
    "Prediction",
    "S4DClient",
    "S4DError",
    "StreamSession",
    "conform",
    "encode_samples",
    "read_file",
    "resample",
]
