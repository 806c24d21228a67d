"""Per-app runtime state shared by the REST routes, the WebSocket handler and the lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from server.errors import ApiError
from server.frontend.client import EnginePool, RemoteModel
from server.metrics import Metrics
from server.settings import Settings


class ModelDirectory:
    """The models the engine serves, as the routes look them up (name -> RemoteModel)."""

    def __init__(self, client: EnginePool):
        self.client = client

    @property
    def ready(self) -> bool:
        return self.client.ready

    @property
    def models(self) -> dict[str, RemoteModel]:
        return self.client.models if self.client.ready else {}

    @property
    def failed(self) -> dict[str, str]:
        return self.client.failed

    def get(self, name: str) -> RemoteModel | None:
        return self.models.get(name)


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics
    client: EnginePool
    engine: object | None = None  # the in-process engine (`--workers 0`), else None
    shutting_down: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)
    connections: set = field(default_factory=set)  # live WebSocket handlers (ws.StreamConnection)
    exit_code: int | None = None  # set: the server should stop and exit with it

    @property
    def registry(self) -> ModelDirectory:
        return ModelDirectory(self.client)

    @property
    def load_error(self) -> str | None:
        return self.client.load_error

    def model_or_error(self, name: str) -> RemoteModel:
        if self.shutting_down:
            raise ApiError(503, "server_busy", "the server is shutting down")
        lm = self.registry.get(name)
        if lm is not None:
            return lm
        if not self.registry.ready:
            if self.load_error:  # for good: waiting would not help (see GET /readyz)
                raise ApiError(503, "server_busy", f"model loading failed: {self.load_error}")
            raise ApiError(503, "server_busy", "models are still loading; try again shortly",
                           headers={"Retry-After": "1"})
        raise ApiError(404, "unknown_model", f"no model named {name!r}; see GET /v1/models")
