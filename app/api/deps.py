"""What routes depend on: the service (once ready) and the API key check."""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.api.auth import Callers, require_key
from app.api.errors import APIError
from app.api.limits import Limits
from app.api.offload import BodyParser
from app.config import Settings
from app.engine.admission import REQUESTS, ShareTable
from app.service import Service

log = logging.getLogger(__name__)

# after the engine died: seconds for the failed requests' answers to get out before the server exits
ENGINE_DEATH_GRACE = 1.0


@dataclass
class AppState:
    """The app's lifecycle: loading -> ready -> draining -> stopped (or: the engine died)."""

    settings: Settings
    service: Service | None = None
    load_error: BaseException | None = None
    engine_error: str | None = None  # why the engine died or hung, once it did
    draining: bool = False
    in_flight: int = 0  # HTTP requests being served (health probes included)
    on_fatal: Callable[[], None] | None = None  # set by the server: stop serving (the process exits 1)
    on_ready: list[Callable[[Service], None]] = field(default_factory=list)  # e.g. metrics subscribing
    open_connections: Callable[[], int] | None = None  # set by the server (GPT2_MAX_CONNECTIONS)
    shares_path: str | None = None  # the share table all API processes map (GPT2_API_SERVERS > 1)
    row: int = 0  # this API process's row of it
    body_reads: set = field(default_factory=set)  # the deadlines of request bodies being read (cut on drain)

    def __post_init__(self) -> None:
        self.callers = Callers(self.settings)
        rows = self.settings.api_servers if self.shares_path else 1
        self.shares = ShareTable(rows, self.callers.slots, self.shares_path)
        self.shares.clear_row(self.row)  # a restarted process: what its predecessor counted is gone
        self.parser = BodyParser()  # request bodies (a worker process for the large ones)

    def count_request(self, slot: int, n: int) -> None:
        """An API key's requests in flight (GPT2_KEY_CONCURRENCY), in this process's row."""
        self.shares.counts[self.row, REQUESTS, slot] += n

    def start_drain(self) -> None:
        """Refuse new requests; cut requests whose body is still arriving (they answer 503 at once)."""
        self.draining = True
        now = asyncio.get_running_loop().time()
        for deadline in list(self.body_reads):
            deadline.reschedule(now)

    @property
    def limits(self) -> Limits:
        return Limits.from_settings(self.settings)

    @property
    def ready(self) -> bool:
        return self.service is not None and self.service.engine.is_alive and not self.draining

    def engine_died(self, reason: str) -> None:
        """The engine client's death listener: probes answer 503 from now on, and the server exits
        shortly (so that an orchestrator restarts the pod even without a liveness probe)."""
        self.engine_error = reason
        if self.on_fatal is not None:
            asyncio.get_running_loop().call_later(ENGINE_DEATH_GRACE, self.on_fatal)


# async on purpose: FastAPI runs plain `def` dependencies in a thread pool, a hop per request

async def get_state(request: Request) -> AppState:
    return request.app.state.gpt2


async def get_service(request: Request) -> Service:
    """The loaded service; 503 while loading or draining, or once the engine died."""
    state: AppState = request.app.state.gpt2
    if state.draining:
        raise APIError(503, "the server is shutting down; retry on another replica", code="draining")
    if state.engine_error is not None:
        raise APIError(503, f"the engine is down: {state.engine_error}", code="engine_dead")
    if state.service is None:
        raise APIError(503, "the model is not ready yet", code="not_ready", headers={"Retry-After": "5"})
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
