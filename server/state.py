"""Per-app runtime state shared by the REST routes, the WebSocket handler and the lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from server.errors import ApiError
from server.metrics import Metrics
from server.registry import LoadedModel, ModelRegistry
from server.settings import Settings


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics
    registry: ModelRegistry
    shutting_down: bool = False
    load_error: str | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    connections: set = field(default_factory=set)  # live WebSocket handlers (ws.StreamConnection)

    def model_or_error(self, name: str) -> LoadedModel:
        if self.shutting_down:
            raise ApiError(503, "server_busy", "the server is shutting down")
        lm = self.registry.get(name)
        if lm is not None:
            return lm
        if not self.registry.ready:
            raise ApiError(503, "server_busy", "models are still loading; try again shortly",
                           headers={"Retry-After": "1"})
        raise ApiError(404, "unknown_model", f"no model named {name!r}; see GET /v1/models")
