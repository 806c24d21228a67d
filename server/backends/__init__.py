"""Inference backends behind one interface (`server.backends.base.Backend`)."""

from server.backends.base import (
    Backend,
    BackendError,
    ModelMetadata,
    SlabStorage,
    State,
    get_backend,
)

__all__ = ["Backend", "BackendError", "ModelMetadata", "SlabStorage", "State", "get_backend"]
