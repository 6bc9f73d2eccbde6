"""POST /v1/score: per-token logprobs and ranks, perplexity and detection statistics.

Every input (or window of a long input) is one prefill-only engine sequence: it batches with
the other inputs of the call, other score calls and generation. The statistics are app/scoring.py's.
"""

import time
import uuid
from dataclasses import asdict, dataclass, field

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api import score_schemas as schemas
from app.api.deps import LimitsDep, ServiceDep, check_model
from app.api.disconnect import time_limit, until_done_or_disconnected
from app.api.errors import APIError
from app.api.limits import Limits, check_cost, check_texts, num_windows, refuse
from app.api.offload import OffloadRoute, TooManyTokens, encode_texts, json_response
from app.api.record import RecordDep
from app.api.score_explain import entries_per_position, explain_params, explanation, plan_explain
from app.api.score_schemas import ScoreRequest, ScoreResponse
from app.api.submission import check, gather_all, submit_all
from app.detect.features import features
from app.detect.judge import Judge
from app.engine.client import RequestStream
from app.engine.inspection import Readout
from app.engine.sequence import PromptScores, SamplingParams
from app.engine.stats import RequestStats
from app.scoring import Summary, Window, merge_windows, plan_windows, summarize, window_params
from app.service import Service

router = APIRouter(tags=["scoring"], route_class=OffloadRoute)


@dataclass
class Item:
    """One input: its tokens (context first), the windows that score it, and their streams."""

    index: int
    context_ids: list[int]
    input_ids: list[int]
    windows: list[Window]
    streams: list[RequestStream] = field(default_factory=list)
    scores: list[PromptScores | None] = field(default_factory=list)
    stats: list[RequestStats] = field(default_factory=list)
    explained: list[int] | None = None  # positions to explain (one window then)
    readout: Readout | None = None  # their explanation

    @property
    def token_ids(self) -> list[int]:
        return self.context_ids + self.input_ids


@router.post("/v1/score", response_model=ScoreResponse, summary="Score texts: logprobs, ranks, perplexity, detection",
             responses={400: {"description": "invalid field, input too long, or a request over its limits"},
                        404: {"description": "unknown model"}, 429: {"description": "queue full"},
                        503: {"description": "not ready or draining"},
                        504: {"description": "the request's deadline passed"}})
async def create_score(body: ScoreRequest, request: Request, service: ServiceDep, record: RecordDep,
                       limits: LimitsDep) -> Response:
    check_model(service, body.model)
    inputs, contexts = body.inputs(), body.contexts()
    check_texts([*inputs, *(contexts or [])], limits, "input")
    stride = check_stride(body, service.info.max_model_len, limits)
    pairs = await tokenize(service, inputs, contexts, limits.max_request_tokens)
    items = plan(service, body, pairs, stride, limits)
    request_id = f"score-{uuid.uuid4().hex}"
    submit(service, body, items, request_id)
    record.prompt_tokens = sum(len(item.token_ids) for item in items)
    record.completion_tokens = 0
    record.prompt = body.input  # logged only with GPT2_LOG_PROMPTS
    streams = [s for item in items for s in item.streams]
    try:
        await until_done_or_disconnected(collect(items), request, time_limit(service.settings, body.timeout))
    finally:
        service.engine.close(streams)
    record.engine_stats = [s for item in items for s in item.stats]
    sent = record.prompt_tokens

    def build() -> dict:  # in a worker thread when the response is big
        merged = [merge_windows(item.windows, item.scores) for item in items]
        summaries = [summarize(scores, body.detect) for scores in merged]
        record.scored_tokens = scored = sum(s.num_tokens for s in summaries)
        results = [result(service, body, *args) for args in zip(items, merged, summaries, strict=True)]
        return {"id": request_id, "object": "score", "created": int(time.time()), "model": service.info.name,
                "data": results, "usage": {"prompt_tokens": sent, "scored_tokens": scored, "total_tokens": sent},
                "detector": detector_info(service.judge)}

    return await json_response(build, entries(body, items, service))


def check_stride(body: ScoreRequest, max_len: int, limits: Limits) -> int | None:
    if body.stride is None:
        return None
    if body.stride >= max_len:
        raise APIError(400, f"stride must be at most max_model_len - 1 = {max_len - 1}, got {body.stride}",
                       param="stride", code="invalid_value")
    if body.stride < limits.min_stride:
        raise refuse(f"stride {body.stride} would make a window every {body.stride} tokens; the smallest stride "
                     f"accepted is {limits.min_stride}", "stride", "min_stride")
    return body.stride


async def tokenize(service: Service, inputs: list, contexts: list | None,
                   budget: int | None = None) -> list[tuple[list[int], list[int]]]:
    """(context ids, input ids) of each input, every text encoded in one batch. Context and
    continuation are tokenized apart and concatenated, as lm-evaluation-harness does, after moving
    the context's trailing whitespace to the start of the continuation (so "is " + "Paris" scores
    " Paris"); an empty context is <|endoftext|>."""
    pairs = []
    for i, text in enumerate(inputs):
        context = contexts[i] if contexts else None
        if isinstance(context, str) and isinstance(text, str):
            stripped = context.rstrip()
            context, text = stripped, context[len(stripped):] + text
        pairs.append((context, text))
    texts = [t for pair in pairs for t in pair if isinstance(t, str)]
    try:  # (tokenizing stops once the texts are over the request's token budget)
        encoded = iter(await encode_texts(service.tokenizer, texts, budget))
    except TooManyTokens as exc:
        raise refuse(f"the texts have more than {exc.counted} tokens; at most {budget} are allowed", "input",
                     "max_request_tokens") from None
    eos = service.tokenizer.eos_token_id

    def ids(value) -> list[int]:
        return next(encoded) if isinstance(value, str) else list(value)

    out = []
    for context, text in pairs:
        context_ids = None if context is None else ids(context)
        input_ids = ids(text)
        if context_ids is None:
            context_ids = []
        elif not context_ids:
            context_ids = [eos if eos is not None else 0]
        out.append((context_ids, input_ids))
    return out


def plan(service: Service, body: ScoreRequest, pairs: list[tuple[list[int], list[int]]], stride: int | None,
         limits: Limits) -> list[Item]:
    """Validate every input and count what it costs; then plan its engine sequences. 400 on the
    first bad input, or if the whole request is over its limits (checked before any window is built)."""
    max_len, vocab = service.info.max_model_len, service.info.vocab_size
    several = len(pairs) > 1
    sequences = tokens = 0
    shapes = []  # (context tokens, tokens, windows) of each input
    for i, (context_ids, input_ids) in enumerate(pairs):
        which = f" (input {i})" if several else ""
        if not input_ids:
            raise APIError(400, f"the input is empty{which}", param="input", code="invalid_value")
        for name, ids in (("context", context_ids), ("input", input_ids)):
            if max(ids, default=0) >= vocab:
                raise APIError(400, f"token id {max(ids)} is outside the vocabulary [0, {vocab}){which}", param=name,
                               code="invalid_value")
        n = len(context_ids) + len(input_ids)
        if n > max_len and body.window == "none":
            raise APIError(400, f"the input has {n} tokens{' (context included)' if context_ids else ''}{which}, "
                           f"more than this model's maximum context length of {max_len} tokens; send "
                           "\"window\": \"sliding\" to score it with a sliding window", param="input",
                           code="context_length_exceeded")
        windows = num_windows(n, len(context_ids) or 1, max_len, stride or max_len // 2)
        sequences += windows
        tokens += n if windows <= 1 else windows * max_len  # an upper bound for several windows
        shapes.append((len(context_ids), n, windows))
    positions = sum(len(input_ids) for _, input_ids in pairs) if body.return_tokens else 0
    check_cost(sequences, tokens, positions * (1 + body.top_logprobs), limits, "input")
    explained = plan_explain(body.explain, shapes, positions * (1 + body.top_logprobs), service.info, limits)
    items = []
    for i, (context_ids, input_ids) in enumerate(pairs):
        try:
            windows = plan_windows(len(context_ids) + len(input_ids), len(context_ids) or 1, max_len, stride)
        except ValueError as exc:  # only a max_model_len too small for any stride
            raise APIError(400, str(exc), param="stride", code="invalid_value") from exc
        items.append(Item(i, context_ids, input_ids, windows, scores=[None] * len(windows),
                          explained=explained[i] if explained else None))
    return items


def submit(service: Service, body: ScoreRequest, items: list[Item], request_id: str) -> None:
    """Queue every window of every input, or none."""
    params = body.to_sampling_params()

    def params_of(item: Item, window: Window) -> SamplingParams:
        windowed = window_params(params, window)
        if item.explained is None:
            return windowed
        return msgspec.structs.replace(windowed, explain=explain_params(body.explain, item.explained))

    sequences = [(f"{request_id}-{item.index}-{w}", item.token_ids[window.begin : window.end], params_of(item, window))
                 for item in items for w, window in enumerate(item.windows)]
    streams = iter(submit_all(service, sequences))
    for item in items:
        item.streams = [next(streams) for _ in item.windows]


async def collect(items: list[Item]) -> None:
    """Wait for every window's scores (a prefill-only sequence ends with one output)."""

    async def one(item: Item, w: int) -> None:
        async for output in item.streams[w]:
            if not output.finished:
                continue
            check(output)
            item.scores[w] = output.prompt_scores or PromptScores()
            item.readout = output.readout
            if output.stats is not None:
                item.stats.append(output.stats)

    await gather_all([one(item, w) for item in items for w in range(len(item.windows))])


def entries(body: ScoreRequest, items: list[Item], service: Service) -> int:
    """Per-token entries of the response (decides whether it is built in a thread)."""
    explained = sum(entries_per_position(body.explain, p, service.info) for item in items for p in item.explained or [])
    return explained + (sum(len(item.input_ids) for item in items) * (1 + body.top_logprobs) if body.return_tokens
                        else len(items))


def result(service: Service, body: ScoreRequest, item: Item, merged: PromptScores, summary: Summary) -> dict:
    """One input's entry of the response (a ScoreResult, as plain data): the per-token arrays when
    asked, the numbers always."""
    out = {"index": item.index, "tokens": None, "token_ids": None, "token_logprobs": None, "ranks": None,
           "top_logprobs": None, "entropies": None, "logprob_variances": None,
           "num_context_tokens": len(item.context_ids),
           "num_tokens": summary.num_tokens, "sum_logprob": summary.sum_logprob, "mean_logprob": summary.mean_logprob,
           "perplexity": summary.perplexity, "is_greedy": summary.is_greedy, "num_windows": len(item.windows),
           "detection": detection_of(summary, judge_verdict(service.judge, merged, summary)),
           "explanation": None if body.explain is None else explanation(item.readout, item.token_ids, body.explain,
                                                                        service.info, service.tokenizer.token_str)}
    if not body.return_tokens:
        return out
    pad = [] if item.context_ids else [None]  # the first token has nothing before it
    token_str = service.tokenizer.token_str
    out["token_ids"] = item.input_ids
    out["tokens"] = [token_str(t) for t in item.input_ids]
    out["token_logprobs"] = pad + merged.token_logprobs
    out["ranks"] = pad + merged.ranks
    if body.detect:
        out["entropies"] = pad + merged.entropy
        out["logprob_variances"] = pad + merged.logprob_variance
    if body.top_logprobs:
        out["top_logprobs"] = pad + [[{"token": token_str(t), "token_id": t, "logprob": lp} for t, lp in alternatives]
                                     for alternatives in merged.top]
    return out


def detection_of(summary: Summary, judge: dict | None) -> dict | None:
    return None if summary.detection is None else {**asdict(summary.detection), "judge": judge}


# --- the trained judge (GPT2_DETECTOR; app/detect) ------------------------------------------------
def judge_verdict(judge: Judge | None, merged: PromptScores, summary: Summary) -> dict | None:
    """The judge's verdict on one input (a JudgeVerdict, as plain data), from the scores of the same
    forward pass: its features are the ones `gpt2-serve train-detector` computes from this route's response."""
    if judge is None or summary.detection is None or len(merged.logprob_variance) != len(merged.token_logprobs):
        return None
    return judge.verdict(features(merged.token_logprobs, merged.ranks, merged.entropy, merged.logprob_variance))


def detector_info(judge: Judge | None) -> dict:
    if judge is None:
        return {"loaded": False, "message": schemas.NO_JUDGE}
    return {"loaded": True, "name": judge.name, "threshold": judge.threshold}
