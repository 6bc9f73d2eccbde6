"""Handing a request's engine sequences to the engine, and reading what comes back, for every route.

A request (several prompts, n choices, a long text's windows) becomes several engine sequences:
they are queued all together or not at all, and each one's last output says how it ended."""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from app.api.auth import current_caller
from app.api.errors import APIError
from app.engine.admission import QueueFullError
from app.engine.client import EngineDeadError, RequestStream
from app.engine.protocol import EngineRequest, FinishReason, RequestOutput
from app.engine.validation import InvalidRequestError
from app.service import Service

T = TypeVar("T")


def submit_all(service: Service, sequences: list[EngineRequest]) -> list[RequestStream]:
    """Queue every sequence, or none of them, for the request's caller (its tenant shares the
    engine fairly with the others): 400 if one can never run, 429 while the engine is at capacity
    (or the caller is past its share), 503 when it is gone. (The request's size was checked
    against its limits before: app/api/limits.py.)"""
    caller = current_caller.get()
    try:
        return service.engine.submit(sequences, caller.tenant if caller is not None else None)
    except InvalidRequestError as exc:
        raise APIError(400, exc.message, param=exc.param, code=exc.code) from exc
    except QueueFullError as exc:
        raise APIError(429, f"the server is at capacity ({exc}); retry later", code="queue_full",
                       headers={"Retry-After": "1"}) from exc
    except EngineDeadError as exc:
        raise APIError(503, f"the engine is down: {exc}", code="engine_dead") from exc


def check(output: RequestOutput) -> None:
    """Raise for an output that ends its sequence badly: the engine failed it, or the server cut it off."""
    if output.finish_reason is FinishReason.ERROR:
        raise APIError(500, f"the engine failed this request: {output.error}", code="engine_error")
    if output.finish_reason is FinishReason.ABORT:  # not by the route: the server is stopping
        raise APIError(503, "the request was cut off: the server is shutting down", code="draining")


def engine_dead(exc: EngineDeadError) -> APIError:
    return APIError(503, f"the engine is down: {exc}; no request can be served", code="engine_dead")


async def gather_all(works: list[Awaitable[T]]) -> list[T]:
    """Await all, and return their results; on the first failure cancel the rest, so none is left
    running unobserved. An engine that died fails them all with 503."""
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        return await asyncio.gather(*tasks)
    except EngineDeadError as exc:
        raise engine_dead(exc) from exc
    finally:
        for task in tasks:
            task.cancel()
