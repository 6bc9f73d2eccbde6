"""What routes depend on: the service (once ready) and the API key check."""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.api.auth import Callers, require_key
from app.api.errors import APIError
from app.api.lifecycle import Lifecycle
from app.api.limits import Limits
from app.api.offload import BodyParser
from app.config import Settings
from app.engine.admission import REQUESTS, ShareTable
from app.service import Service

log = logging.getLogger(__name__)

@dataclass
class AppState:
    """What the app holds: its settings, its lifecycle (phase, requests in flight, drain: lifecycle.py),
    the service once loaded, and the callers' bookkeeping."""

    settings: Settings
    service: Service | None = None
    on_ready: list[Callable[[Service], None]] = field(default_factory=list)  # e.g. metrics subscribing
    open_connections: Callable[[], int] | None = None  # set by the server (GPT2_MAX_CONNECTIONS)
    shares_path: str | None = None  # the share table all API processes map (GPT2_API_SERVERS > 1)
    row: int = 0  # this API process's row of it

    def __post_init__(self) -> None:
        self.lifecycle = Lifecycle(self.settings.drain_timeout)
        self.callers = Callers(self.settings)
        rows = self.settings.api_servers if self.shares_path else 1
        self.shares = ShareTable(rows, self.callers.slots, self.shares_path)
        self.shares.clear_row(self.row)  # a restarted process: what its predecessor counted is gone
        self.parser = BodyParser()  # request bodies (a worker process for the large ones)

    def count_request(self, slot: int, n: int) -> None:
        """An API key's requests in flight (GPT2_KEY_CONCURRENCY), in this process's row."""
        self.shares.counts[self.row, REQUESTS, slot] += n

    @property
    def limits(self) -> Limits:
        return Limits.from_settings(self.settings)


# async on purpose: FastAPI runs plain `def` dependencies in a thread pool, a hop per request

async def get_state(request: Request) -> AppState:
    return request.app.state.gpt2


async def get_service(request: Request) -> Service:
    """The loaded service; 503 while loading or draining, or once the engine died (lifecycle.py)."""
    state: AppState = request.app.state.gpt2
    refusal = state.lifecycle.refusal()
    if refusal is not None:
        raise refusal
    return state.service


async def check_api_key(request: Request) -> None:
    """When GPT2_API_KEYS is set, require `Authorization: Bearer <one of them>` (the credentials were
    read once, by RequestContextMiddleware: see auth.py)."""
    require_key(request)


async def get_limits(request: Request) -> Limits:
    return request.app.state.gpt2.limits


StateDep = Annotated[AppState, Depends(get_state)]
ServiceDep = Annotated[Service, Depends(get_service)]
LimitsDep = Annotated[Limits, Depends(get_limits)]


def check_model(service: Service, name: str | None) -> None:
    """404 unless `name` is the served model (its served name or GPT2_MODEL), or omitted."""
    if name is not None and name not in (service.info.name, service.info.source):
        raise APIError(404, f"the model {name!r} does not exist; this server serves {service.info.name!r}",
                       param="model", code="model_not_found")
