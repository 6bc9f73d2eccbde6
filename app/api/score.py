"""POST /v1/score: per-token logprobs and ranks, perplexity and detection statistics.

The route reads: tokenize, plan (score_plan.py: every check, then the engine sequences), submit,
collect, merge each input's windows and respond. Every input (or window of a long input) is one
prefill-only engine sequence: it batches with the other inputs of the call, other score calls and
generation. The response is built from score_schemas.py's TypedDicts, the statistics with
app/scoring.py's maths.
"""

import math
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import LimitsDep, ServiceDep, check_model
from app.api.disconnect import time_limit, until_done_or_disconnected
from app.api.limits import refuse
from app.api.offload import OffloadRoute, TooManyTokens, encode_texts, json_response
from app.api.record import RecordDep
from app.api.score_plan import Pair, ScoredInput, check_before_tokenizing, plan
from app.api.score_schemas import (
    NO_JUDGE,
    AttentionLayer,
    Detection,
    DetectorInfo,
    Explain,
    Explanation,
    GLTRBuckets,
    JudgeVerdict,
    LensLayer,
    LensToken,
    PositionExplanation,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    ScoreUsage,
    TopLogprob,
)
from app.api.submission import check, gather_all, submit_all
from app.detect.features import features
from app.detect.judge import Judge
from app.engine import protocol
from app.engine.client import RequestStream
from app.engine.protocol import EngineInfo, PromptScores, RequestOutput
from app.scoring import fast_detect_gpt, gltr_buckets, mean_log_rank, merge_windows, perplexity
from app.service import Service

router = APIRouter(tags=["scoring"], route_class=OffloadRoute)


@router.post("/v1/score", response_model=ScoreResponse, summary="Score texts: logprobs, ranks, perplexity, detection",
             responses={400: {"description": "invalid field, input too long, or a request over its limits"},
                        404: {"description": "unknown model"}, 429: {"description": "queue full"},
                        503: {"description": "not ready or draining"},
                        504: {"description": "the request's deadline passed"}})
async def create_score(body: ScoreRequest, request: Request, service: ServiceDep, record: RecordDep,
                       limits: LimitsDep) -> Response:
    check_model(service, body.model)
    check_before_tokenizing(body, service.info, limits)
    pairs = await tokenize(service, body, limits.max_request_tokens)
    planned = plan(body, pairs, service.info, limits)
    request_id = f"score-{uuid.uuid4().hex}"
    streams = submit_all(service, planned.sequences(request_id))
    record.prompt_tokens = sent = sum(len(c) + len(t) for c, t in pairs)
    record.completion_tokens = 0
    record.prompt = body.input  # logged only with GPT2_LOG_PROMPTS
    try:
        outputs = await until_done_or_disconnected(collect(streams), request, time_limit(service.settings,
                                                                                          body.timeout))
    finally:
        service.engine.close(streams)
    record.engine_stats = [o.stats for o in outputs if o.stats is not None]

    def build() -> ScoreResponse:  # in a worker thread when the response is big
        finals = iter(outputs)  # each input's windows, in order
        data = [result(item, [next(finals) for _ in item.windows], body, service) for item in planned.inputs]
        record.scored_tokens = scored = sum(r["num_tokens"] for r in data)
        return ScoreResponse(id=request_id, object="score", created=int(time.time()), model=service.info.name,
                             data=data, usage=ScoreUsage(prompt_tokens=sent, scored_tokens=scored, total_tokens=sent),
                             detector=detector_info(service.judge))

    return await json_response(build, planned.entries)


async def tokenize(service: Service, body: ScoreRequest, budget: int) -> list[Pair]:
    """(context ids, input ids) of each input, every text encoded in one batch. Context and
    continuation are tokenized apart and concatenated, as lm-evaluation-harness does, after moving
    the context's trailing whitespace to the start of the continuation (so "is " + "Paris" scores
    " Paris"); an empty context is <|endoftext|>."""
    pairs = []
    contexts = body.contexts()
    for i, text in enumerate(body.inputs()):
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
        context_ids = [] if context is None else ids(context) or [eos if eos is not None else 0]
        out.append((context_ids, ids(text)))
    return out


async def collect(streams: list[RequestStream]) -> list[RequestOutput]:
    """Each sequence's last output (a prefill-only sequence ends with one, its scores)."""

    async def last(stream: RequestStream) -> RequestOutput:
        async for output in stream:
            if output.finished:
                check(output)
                return output
        raise AssertionError("a stream ended without its last output")

    return await gather_all([last(s) for s in streams])


# --- the response --------------------------------------------------------------------------------
def result(item: ScoredInput, outputs: list[RequestOutput], body: ScoreRequest, service: Service) -> ScoreResult:
    """One input's entry of the response from its windows' outputs: the numbers always, the
    per-token arrays when asked."""
    scores = merge_windows(item.windows, [o.prompt_scores or PromptScores() for o in outputs])
    n, total = len(scores.token_logprobs), math.fsum(scores.token_logprobs)
    mean = total / n if n else None
    token_str, per_token = service.tokenizer.token_str, body.return_tokens
    pad = [] if item.context_ids else [None]  # the first token has nothing before it
    readout = outputs[0].readout if outputs else None  # (explain has one window)
    return ScoreResult(
        index=item.index,
        tokens=[token_str(t) for t in item.input_ids] if per_token else None,
        token_ids=item.input_ids if per_token else None,
        token_logprobs=pad + scores.token_logprobs if per_token else None,
        ranks=pad + scores.ranks if per_token else None,
        top_logprobs=pad + [[TopLogprob(token=token_str(t), token_id=t, logprob=lp) for t, lp in alternatives]
                            for alternatives in scores.top] if per_token and body.top_logprobs else None,
        entropies=pad + scores.entropy if per_token and body.detect else None,
        logprob_variances=pad + scores.logprob_variance if per_token and body.detect else None,
        num_context_tokens=len(item.context_ids),
        num_tokens=n,
        sum_logprob=total,
        mean_logprob=mean,
        perplexity=perplexity(mean),
        is_greedy=all(r == 1 for r in scores.ranks) if n else None,
        num_windows=len(item.windows),
        detection=detection(scores, service.judge) if body.detect else None,
        explanation=None if body.explain is None else explanation(readout, item.token_ids, body.explain, service.info,
                                                                  token_str))


def detection(scores: PromptScores, judge: Judge | None) -> Detection | None:
    """The detection statistics of one input's scored tokens, or None if nothing was scored. The
    mean entropy, Fast-DetectGPT and the judge need the per-position statistics (detect=true)."""
    ranks = scores.ranks
    if not ranks:
        return None
    top_10, top_100, top_1000, rest = gltr_buckets(ranks)
    with_stats = len(scores.entropy) == len(scores.logprob_variance) == len(ranks)
    return Detection(gltr=GLTRBuckets(top_10=top_10, top_100=top_100, top_1000=top_1000, rest=rest),
                     mean_log_rank=mean_log_rank(ranks),
                     mean_entropy=math.fsum(scores.entropy) / len(ranks) if with_stats else None,
                     fast_detect_gpt=fast_detect_gpt(scores.token_logprobs, scores.entropy, scores.logprob_variance),
                     judge=judge_verdict(judge, scores))


def judge_verdict(judge: Judge | None, scores: PromptScores) -> JudgeVerdict | None:
    """The trained judge's verdict (GPT2_DETECTOR; app/detect) on one input, from the scores of the
    same forward pass: its features are the ones `gpt2-serve train-detector` computes from this
    route's response."""
    if judge is None or not scores.ranks or len(scores.logprob_variance) != len(scores.token_logprobs):
        return None
    return judge.verdict(features(scores.token_logprobs, scores.ranks, scores.entropy, scores.logprob_variance))


def detector_info(judge: Judge | None) -> DetectorInfo:
    if judge is None:
        return DetectorInfo(loaded=False, message=NO_JUDGE)
    return DetectorInfo(loaded=True, name=judge.name, threshold=judge.threshold)


def explanation(readout: protocol.Readout | None, token_ids: list[int], explain: Explain, info: EngineInfo,
                token_str) -> Explanation:
    """The engine's readout of one input -> its `explanation`."""
    explained = readout.explanation if readout is not None else []
    return Explanation(num_layers=info.num_layers, num_heads=info.num_heads,
                       positions=[position(e, token_ids, explain, info, token_str) for e in explained])


def position(e: protocol.PositionExplanation, token_ids: list[int], explain: Explain, info: EngineInfo,
             token_str) -> PositionExplanation:
    """One explained position, from the engine's flat arrays."""
    L, H = info.num_layers, info.num_heads
    attention = lens = first_top1_layer = settled_layer = None
    if explain.attention_top_k:
        k = min(explain.attention_top_k, e.position + 1)
        pairs = list(map(list, zip(e.attention_keys, e.attention_weights, strict=True)))
        rows = [pairs[j : j + k] for j in range(0, len(pairs), k)]  # L x (H + 1) rows of k pairs
        attention = [AttentionLayer(heads=rows[layer * (H + 1) : layer * (H + 1) + H], mean=rows[layer * (H + 1) + H])
                     for layer in range(L)]
    if explain.lens_top_k:
        k = explain.lens_top_k
        ids, probs, nexts = e.lens_token_ids, e.lens_probs, e.lens_next_probs
        lens = [LensLayer(top=[LensToken(token=token_str(t), token_id=t, prob=p) for t, p in
                               zip(ids[layer * k : (layer + 1) * k], probs[layer * k : (layer + 1) * k], strict=True)],
                          next_token_prob=nexts[layer] if nexts else None) for layer in range(L + 1)]
        top1 = ids[::k]  # each layer's likeliest token
        first_top1_layer = top1.index(top1[-1])
        settled_layer = next(layer for layer in range(L + 1) if all(t == top1[-1] for t in top1[layer:]))
    return PositionExplanation(position=e.position, token=token_str(token_ids[e.position]), attention=attention,
                               lens=lens, first_top1_layer=first_top1_layer, settled_layer=settled_layer)
