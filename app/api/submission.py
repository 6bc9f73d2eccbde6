"""Handing a request's engine sequences to the engine, and reading what comes back, for every route.

A request (several prompts, n choices, a long text's windows) becomes several engine sequences:
they are queued all together or not at all, and each one's last output says how it ended."""

import asyncio
from collections.abc import Awaitable

from app.api.errors import APIError
from app.engine.async_engine import EngineDeadError, RequestStream
from app.engine.engine import InvalidRequestError
from app.engine.scheduler import QueueFullError
from app.engine.sequence import FinishReason, RequestOutput, SamplingParams
from app.service import Service


def submit_all(service: Service, sequences: list[tuple[str, list[int], SamplingParams]], param: str) -> list[
        RequestStream]:
    """Queue (request id, prompt ids, params) for each sequence, or none of them: 400 if one can
    never run or if there are more than GPT2_MAX_QUEUE (`param` names the field to blame), 429
    while the queue is full, 503 when the engine is not running."""
    engine = service.engine
    limit = service.settings.max_queue
    if len(sequences) > limit:
        raise APIError(400, f"this request needs {len(sequences)} engine sequences (one per prompt and choice, or "
                       f"per window of a long input) but at most {limit} can wait at once (GPT2_MAX_QUEUE); "
                       "split it", param=param, code="too_many_inputs")
    try:
        for _, ids, params in sequences:
            engine.engine.validate(ids, params)
    except InvalidRequestError as exc:
        code = "context_length_exceeded" if "context length" in str(exc) else "invalid_value"
        raise APIError(400, str(exc), param=exc.param, code=code) from exc
    streams: list[RequestStream] = []
    try:
        for request_id, ids, params in sequences:
            streams.append(engine.add_request(request_id, ids, params))
    except (QueueFullError, EngineDeadError) as exc:
        for stream in streams:
            stream.close()
        if isinstance(exc, QueueFullError):
            raise APIError(429, f"the server is at capacity ({exc}); retry later", code="queue_full",
                           headers={"Retry-After": "1"}) from exc
        raise APIError(503, str(exc), code="not_ready") from exc
    return streams


def check(output: RequestOutput) -> None:
    """Raise for an output that ends its sequence badly: the engine failed it, or the server cut it off."""
    if output.error:
        raise APIError(500, f"the engine failed this request: {output.error}", code="engine_error")
    if output.finish_reason is FinishReason.ABORT:  # not by the route: the server is stopping
        raise APIError(503, "the request was cut off: the server is shutting down", code="draining")


async def gather_all(works: list[Awaitable[None]]) -> None:
    """Await all; on the first failure cancel the rest, so none is left running unobserved."""
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
