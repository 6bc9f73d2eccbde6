"""POST /v1/score: per-token logprobs and ranks, perplexity and detection statistics.

Every input (or window of a long input) is one prefill-only engine sequence: it batches with
the other inputs of the call, other score calls and generation. The statistics are app/scoring.py's.
"""

import time
import uuid
from dataclasses import asdict, dataclass, field

from fastapi import APIRouter, Request

from app.api import score_schemas as schemas
from app.api.deps import ServiceDep, check_model
from app.api.disconnect import until_done_or_disconnected
from app.api.errors import APIError
from app.api.score_schemas import ScoreRequest, ScoreResponse, ScoreResult
from app.api.submission import check, gather_all, submit_all
from app.detect.features import features
from app.detect.judge import Judge
from app.engine.async_engine import RequestStream
from app.engine.sequence import PromptScores
from app.engine.stats import RequestStats
from app.scoring import Summary, Window, merge_windows, plan_windows, summarize, window_params
from app.service import Service

router = APIRouter(tags=["scoring"])


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

    @property
    def token_ids(self) -> list[int]:
        return self.context_ids + self.input_ids


@router.post("/v1/score", response_model=ScoreResponse, summary="Score texts: logprobs, ranks, perplexity, detection",
             responses={400: {"description": "invalid field or input too long"}, 404: {"description": "unknown model"},
                        429: {"description": "queue full"}, 503: {"description": "not ready or draining"}})
async def create_score(body: ScoreRequest, request: Request, service: ServiceDep) -> ScoreResponse:
    check_model(service, body.model)
    items = plan(service, body)
    request_id = f"score-{uuid.uuid4().hex}"
    submit(service, body, items, request_id)
    request.state.prompt_tokens = sum(len(item.token_ids) for item in items)
    request.state.completion_tokens = 0
    request.state.prompt_text = body.input  # logged only with GPT2_LOG_PROMPTS
    streams = [s for item in items for s in item.streams]
    try:
        await until_done_or_disconnected(collect(items), request)
    finally:
        for stream in streams:
            stream.close()
    merged = [merge_windows(item.windows, item.scores) for item in items]
    summaries = [summarize(scores, body.detect) for scores in merged]
    results = [result(service, body, *args) for args in zip(items, merged, summaries, strict=True)]
    scored = sum(s.num_tokens for s in summaries)
    request.state.scored_tokens = scored
    request.state.engine_stats = [s for item in items for s in item.stats]
    sent = request.state.prompt_tokens
    return ScoreResponse(id=request_id, created=int(time.time()), model=service.info.name, data=results,
                         usage=schemas.ScoreUsage(prompt_tokens=sent, scored_tokens=scored, total_tokens=sent),
                         detector=detector_info(service.judge))


def tokenize(service: Service, text: str | list[int], context: str | list[int] | None) -> tuple[list[int], list[int]]:
    """(context ids, input ids). Context and continuation are tokenized apart and concatenated, as
    lm-evaluation-harness does, after moving the context's trailing whitespace to the start of the
    continuation (so "is " + "Paris" scores " Paris"); an empty context is <|endoftext|>."""
    encode = service.tokenizer.encode
    if context is None:
        return [], encode(text) if isinstance(text, str) else list(text)
    if isinstance(context, str) and isinstance(text, str):
        stripped = context.rstrip()
        context, text = stripped, context[len(stripped):] + text
    context_ids = encode(context) if isinstance(context, str) else list(context)
    if not context_ids:
        eos = service.tokenizer.eos_token_id
        context_ids = [eos if eos is not None else 0]
    return context_ids, encode(text) if isinstance(text, str) else list(text)


def plan(service: Service, body: ScoreRequest) -> list[Item]:
    """Tokenize and validate every input, and plan its engine sequences; 400 on the first bad one."""
    inputs, contexts = body.inputs(), body.contexts()
    max_len, vocab = service.info.max_model_len, service.engine.engine.vocab_size
    several = len(inputs) > 1
    if body.stride is not None and body.stride >= max_len:
        raise APIError(400, f"stride must be at most max_model_len - 1 = {max_len - 1}, got {body.stride}",
                       param="stride", code="invalid_value")
    items = []
    for i, text in enumerate(inputs):
        which = f" (input {i})" if several else ""
        context_ids, input_ids = tokenize(service, text, contexts[i] if contexts else None)
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
        try:
            windows = plan_windows(n, len(context_ids) or 1, max_len, body.stride)
        except ValueError as exc:  # only a max_model_len too small for any stride
            raise APIError(400, str(exc), param="stride", code="invalid_value") from exc
        items.append(Item(i, context_ids, input_ids, windows, scores=[None] * len(windows)))
    return items


def submit(service: Service, body: ScoreRequest, items: list[Item], request_id: str) -> None:
    """Queue every window of every input, or none."""
    params = body.to_sampling_params()
    sequences = [(f"{request_id}-{item.index}-{w}", item.token_ids[window.begin : window.end],
                  window_params(params, window)) for item in items for w, window in enumerate(item.windows)]
    streams = iter(submit_all(service, sequences, param="input"))
    for item in items:
        item.streams = [next(streams) for _ in item.windows]


def close(items: list[Item]) -> None:
    for item in items:
        for stream in item.streams:
            stream.close()


async def collect(items: list[Item]) -> None:
    """Wait for every window's scores (a prefill-only sequence ends with one output)."""

    async def one(item: Item, w: int) -> None:
        async for output in item.streams[w]:
            if not output.finished:
                continue
            check(output)
            item.scores[w] = output.prompt_scores or PromptScores()
            if output.stats is not None:
                item.stats.append(output.stats)

    await gather_all([one(item, w) for item in items for w in range(len(item.windows))])


def result(service: Service, body: ScoreRequest, item: Item, merged: PromptScores, summary: Summary) -> ScoreResult:
    """One input's entry of the response: the per-token arrays when asked, the numbers always."""
    out = ScoreResult(index=item.index, num_context_tokens=len(item.context_ids), num_tokens=summary.num_tokens,
                      sum_logprob=summary.sum_logprob, mean_logprob=summary.mean_logprob,
                      perplexity=summary.perplexity, is_greedy=summary.is_greedy, num_windows=len(item.windows),
                      detection=detection_of(summary, judge_verdict(service.judge, merged, summary)))
    if not body.return_tokens:
        return out
    pad = [] if item.context_ids else [None]  # the first token has nothing before it
    token_str = service.tokenizer.token_str
    out.token_ids = item.input_ids
    out.tokens = [token_str(t) for t in item.input_ids]
    out.token_logprobs = pad + merged.token_logprobs
    out.ranks = pad + merged.ranks
    if body.detect:
        out.entropies = pad + merged.entropy
        out.logprob_variances = pad + merged.logprob_variance
    if body.top_logprobs:
        top = schemas.TopLogprob
        out.top_logprobs = pad + [[top(token=token_str(t), token_id=t, logprob=lp) for t, lp in alternatives]
                                  for alternatives in merged.top]
    return out


def detection_of(summary: Summary, judge: schemas.JudgeVerdict | None = None) -> schemas.Detection | None:
    if summary.detection is None:
        return None
    return schemas.Detection.model_validate({**asdict(summary.detection), "judge": judge})


# --- the trained judge (GPT2_DETECTOR; app/detect) ------------------------------------------------
def judge_verdict(judge: Judge | None, merged: PromptScores, summary: Summary) -> schemas.JudgeVerdict | None:
    """The judge's verdict on one input, from the scores of the same forward pass: its features are
    the ones `gpt2-serve train-detector` computes from this route's response."""
    if judge is None or summary.detection is None or len(merged.logprob_variance) != len(merged.token_logprobs):
        return None
    x = features(merged.token_logprobs, merged.ranks, merged.entropy, merged.logprob_variance)
    return schemas.JudgeVerdict.model_validate(judge.verdict(x))


def detector_info(judge: Judge | None) -> schemas.DetectorInfo:
    if judge is None:
        return schemas.DetectorInfo(loaded=False, message=schemas.NO_JUDGE)
    return schemas.DetectorInfo(loaded=True, name=judge.name, threshold=judge.threshold)
