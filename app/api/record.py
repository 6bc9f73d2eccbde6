"""The typed record of one HTTP request: what its route did, for the request log and metrics.

RequestContextMiddleware puts one on every request (`request.state.record`); routes and error
handlers fill it in; the observability middleware reads it once the response is complete."""

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.api.auth import Caller
from app.engine.protocol import RequestStats


@dataclass
class RequestRecord:
    request_id: str
    prompt_tokens: int | None = None  # the usage reported to the client
    completion_tokens: int | None = None
    scored_tokens: int | None = None
    finish_reasons: list[str] = field(default_factory=list)  # one per choice
    engine_stats: list[RequestStats] = field(default_factory=list)  # one per finished engine sequence
    error_code: str | None = None  # why it was refused or failed
    prompt: object = None  # as sent; logged only with GPT2_LOG_PROMPTS=true
    caller: Caller | None = None  # who sent it (auth.py): its key class labels the per-class metrics


async def get_record(request: Request) -> RequestRecord:
    return request.state.record


RecordDep = Annotated[RequestRecord, Depends(get_record)]
