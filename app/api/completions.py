"""POST /v1/completions: OpenAI's legacy completions, streamed or whole."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from app.api.choice_text import ChoiceText, TokenEntry
from app.api.deps import LimitsDep, ServiceDep, check_model
from app.api.disconnect import time_limit, timed_out, until_done_or_disconnected
from app.api.errors import APIError, error_body
from app.api.limits import Limits, check_cost, check_sampling, check_texts, refuse
from app.api.offload import OffloadRoute, TooManyTokens, encode_texts, json_response
from app.api.record import RecordDep, RequestRecord
from app.api.schemas import CompletionRequest, CompletionResponse, PromptTokensDetails, Usage
from app.api.submission import check, engine_dead, gather_all, submit_all
from app.engine.client import EngineClient, EngineDeadError, RequestStream
from app.engine.protocol import EngineRequest, FinishReason, RequestOutput, RequestStats
from app.service import Service

router = APIRouter(tags=["completions"], route_class=OffloadRoute)


@dataclass
class Choice:
    """One choice being generated: its engine stream and its text."""

    index: int
    prompt_ids: list[int]
    stream: RequestStream
    engine: EngineClient
    text: ChoiceText
    echo_scores: bool  # echo the prompt with its logprobs (they come with the first output)
    logprobs: bool
    finish_reason: str | None = None
    completion_tokens: int = 0
    stats: RequestStats | None = None

    def update(self, output: RequestOutput) -> tuple[str, list[TokenEntry]]:
        """Feed one engine output; return the text and tokens now safe to send."""
        check(output)
        if self.echo_scores and output.prompt_scores is not None:
            self.text.add_prompt(self.prompt_ids, output.prompt_scores if self.logprobs else None)
        for token_id, logprob in zip(output.token_ids, output.logprobs or [None] * len(output.token_ids), strict=True):
            self.text.add(token_id, logprob)
        self.completion_tokens = output.num_output_tokens
        self.stats = output.stats
        if self.text.stopped:  # a stop string ended it, maybe in the very token that hit max_tokens
            self.finish_reason = "stop"
            self.engine.close([self.stream])  # free the slot now (a no-op if the engine had finished it)
        elif output.finished:
            self.finish_reason = "stop" if output.finish_reason is FinishReason.STOP else "length"
        return self.text.take(final=self.finish_reason is not None)


def logprobs_of(entries: list[TokenEntry]) -> dict:
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [e.top for e in entries], "text_offset": [e.offset for e in entries]}


@router.post("/v1/completions", response_model=CompletionResponse, summary="Complete prompts (OpenAI-compatible)",
             responses={429: {"description": "queue full (Retry-After says when to retry)"}})
async def create_completion(body: CompletionRequest, request: Request, service: ServiceDep, record: RecordDep,
                            limits: LimitsDep):
    check_model(service, body.model)
    check_texts(body.prompts(), limits, "prompt")
    check_sampling(body.logit_bias, body.stop, limits)
    prompts = await tokenize_prompts(service, body, limits)
    sequences, tokens, entries = cost(body, prompts)
    check_cost(sequences, tokens, entries, limits, param="n" if body.n > 1 else "prompt")
    request_id = f"cmpl-{uuid.uuid4().hex}"
    choices = submit(service, body, prompts, request_id)
    record.prompt_tokens = sum(map(len, prompts))
    record.prompt = body.prompt  # logged only with GPT2_LOG_PROMPTS=true
    created = int(time.time())
    streams = [c.stream for c in choices]
    timeout = time_limit(service.settings, body.timeout)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # the background task runs even when the client leaves before the first chunk
        return StreamingResponse(stream_chunks(choices, prompts, request_id, created, service.info.name,
                                               include_usage, record, timeout), media_type="text/event-stream",
                                 background=BackgroundTask(close, service.engine, streams))
    try:
        await until_done_or_disconnected(collect(choices), request, timeout)
    finally:
        service.engine.close(streams)
    note(record, choices)

    def build() -> dict:  # a CompletionResponse as plain data (in a worker thread when it is big)
        return {"id": request_id, "object": "text_completion", "created": created, "model": service.info.name,
                "choices": [{"index": c.index, "text": c.text.text[: c.text.released],
                             "logprobs": logprobs_of(c.text.released_entries) if c.logprobs else None,
                             "finish_reason": c.finish_reason} for c in choices],
                "usage": usage(prompts, choices).model_dump()}

    return await json_response(build, entries)


async def close(engine: EngineClient, streams: list[RequestStream]) -> None:
    """Abort what is unfinished (async: it must run on the event loop, not in a worker thread)."""
    engine.close(streams)


async def tokenize_prompts(service: Service, body: CompletionRequest, limits: Limits) -> list[list[int]]:
    prompts = body.prompts()
    if isinstance(prompts[0], str):
        # every choice processes its prompt: stop tokenizing once the request is over its budget
        budget = limits.max_request_tokens // body.n
        try:
            prompts = await encode_texts(service.tokenizer, prompts, budget)
        except TooManyTokens as exc:
            raise refuse(f"the prompts have more than {exc.counted} tokens; with n={body.n} this request would make "
                         f"the engine process more than {exc.counted * body.n}, and at most "
                         f"{limits.max_request_tokens} are allowed", "prompt", "max_request_tokens") from None
    for i, ids in enumerate(prompts):
        if not ids:
            raise APIError(400, "the prompt is empty" + (f" (prompt {i})" if len(prompts) > 1 else ""), param="prompt")
    return prompts


def cost(body: CompletionRequest, prompts: list[list[int]]) -> tuple[int, int, int]:
    """(engine sequences, tokens the engine processes, per-token entries of the response)."""
    prompt_tokens = sum(map(len, prompts))
    entries = 0
    if body.logprobs is not None:
        positions = body.max_tokens * len(prompts) + (prompt_tokens if body.echo else 0)
        entries = body.n * positions * (1 + body.logprobs)
    return len(prompts) * body.n, body.n * (prompt_tokens + body.max_tokens * len(prompts)), entries


def submit(service: Service, body: CompletionRequest, prompts: list[list[int]], request_id: str) -> list[Choice]:
    """n choices per prompt, queued all together or not at all."""
    params = [body.to_sampling_params(j) for j in range(body.n)]
    sequences = [EngineRequest(f"{request_id}-{i * body.n + j}", ids, params[j]) for i, ids in enumerate(prompts)
                 for j in range(body.n)]
    streams = submit_all(service, sequences)
    echo_scores = body.echo and body.logprobs is not None
    choices = []
    for index, (sequence, stream) in enumerate(zip(sequences, streams, strict=True)):
        ids = sequence.prompt_token_ids
        prefix = service.tokenizer.decode(ids) if body.echo and not echo_scores else ""
        text = ChoiceText(service.tokenizer, body.stop, prefix, with_entries=body.logprobs is not None)
        choices.append(Choice(index, ids, stream, service.engine, text, echo_scores, body.logprobs is not None))
    return choices


async def collect(choices: list[Choice]) -> None:
    async def one(choice: Choice) -> None:
        async for output in choice.stream:
            choice.update(output)
            if choice.finish_reason is not None:
                break

    await gather_all([one(c) for c in choices])


async def stream_chunks(choices: list[Choice], prompts: list[list[int]], request_id: str, created: int, model: str,
                        include_usage: bool, record: RequestRecord, timeout: float) -> AsyncIterator[bytes]:
    """SSE: one chunk per choice per engine step with new text, a final chunk per choice with its
    finish_reason, optionally a usage chunk, then [DONE]. Closing the generator (the client went
    away) lets the response's background task abort every unfinished choice. A failure or the
    deadline ends the stream with an error event instead."""
    head = {"id": request_id, "object": "text_completion", "created": created, "model": model}
    chunk = ChunkTemplate(head, include_usage)
    unfinished = len(choices)
    try:
        async with asyncio.timeout(timeout):
            async for choice, output in merged(choices):
                if choice.finish_reason is not None:
                    continue  # ended by a stop string; the abort's output is not news
                text, entries = choice.update(output)
                if not text and not entries and choice.finish_reason is None:
                    continue
                if choice.logprobs:
                    yield chunk.full(choice.index, text, logprobs_of(entries), choice.finish_reason)
                else:
                    yield chunk.text(choice.index, text, choice.finish_reason)
                unfinished -= choice.finish_reason is not None
                if not unfinished:
                    break
    except (APIError, EngineDeadError, TimeoutError) as exc:  # say what went wrong in the stream, and end it
        error = engine_dead(exc) if isinstance(exc, EngineDeadError) else timed_out(timeout) if isinstance(
            exc, TimeoutError) else exc
        record.error_code = error.code
        yield b"data: " + orjson.dumps(error_body(error.status, error.message, code=error.code)) + b"\n\n"
        return
    if include_usage:
        yield b"data: " + orjson.dumps({**head, "choices": [], "usage": usage(prompts, choices).model_dump()}) + b"\n\n"
    yield b"data: [DONE]\n\n"
    note(record, choices)


class ChunkTemplate:
    """SSE chunks of one completion stream. A plain text chunk is a prebuilt prefix, the JSON of
    the text, and a prebuilt suffix: no dict per token, one small orjson call."""

    def __init__(self, head: dict, include_usage: bool):
        self.head, self.include_usage = head, include_usage
        prefix = orjson.dumps({**head, "choices": []})[:-2]  # ...,"choices":[  (without ]} )
        self._prefix = b"data: " + prefix + b'{"index":'
        tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        self._open_suffix = b',"logprobs":null,"finish_reason":null}]' + tail
        self._tail = tail

    def text(self, index: int, text: str, finish_reason: str | None) -> bytes:
        if finish_reason is None:
            return b"%s%d,\"text\":%s%s" % (self._prefix, index, orjson.dumps(text), self._open_suffix)
        return self.full(index, text, None, finish_reason)

    def full(self, index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> bytes:
        chunk = {**self.head, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                           "finish_reason": finish_reason}]}
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def merged(choices: list[Choice]) -> AsyncIterator[tuple[Choice, RequestOutput]]:
    """The outputs of all choices, in the order they arrive."""
    if len(choices) == 1:  # the common case, without a task per choice
        async for output in choices[0].stream:
            yield choices[0], output
        return
    queue: asyncio.Queue[tuple[Choice, RequestOutput]] = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        async for output in choice.stream:
            queue.put_nowait((choice, output))

    pumps = [asyncio.create_task(pump(c)) for c in choices]
    try:
        while True:
            yield await queue.get()
    finally:
        for task in pumps:
            task.cancel()


def usage(prompts: list[list[int]], choices: list[Choice]) -> Usage:
    prompt_tokens = sum(map(len, prompts))
    completion = sum(c.completion_tokens for c in choices)
    # each prompt counts once, as in prompt_tokens: its tokens that none of its n choices computed
    n = len(choices) // len(prompts)
    cached = sum(min(c.stats.cached_tokens if c.stats else 0 for c in choices[i : i + n])
                 for i in range(0, len(choices), n))
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


def note(record: RequestRecord, choices: list[Choice]) -> None:
    """What the request log and metrics need."""
    record.completion_tokens = sum(c.completion_tokens for c in choices)
    record.finish_reasons = [c.finish_reason for c in choices]
    record.engine_stats = [c.stats for c in choices if c.stats is not None]
