"""POST /v1/embeddings: OpenAI's embeddings API on the served GPT-2 (docs/embeddings.md).

Every input is one prefill-only engine sequence that pools its hidden states (app/engine/readout.py):
it batches with other inputs, other requests and generation, under the same limits."""

import array
import base64
import sys
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import LimitsDep, ServiceDep, check_model
from app.api.disconnect import time_limit, until_done_or_disconnected
from app.api.embedding_schemas import EmbeddingRequest, EmbeddingResponse
from app.api.errors import APIError
from app.api.limits import check_cost, check_texts
from app.api.offload import OffloadRoute, encode_texts, json_response
from app.api.record import RecordDep
from app.api.submission import check, gather_all, submit_all
from app.engine.client import RequestStream
from app.engine.protocol import EngineInfo, EngineRequest, SamplingParams
from app.service import Service

router = APIRouter(tags=["embeddings"], route_class=OffloadRoute)


@router.post("/v1/embeddings", response_model=EmbeddingResponse, summary="Embed texts (OpenAI-compatible)",
             responses={429: {"description": "queue full (Retry-After says when to retry)"},
                        504: {"description": "the request's deadline passed"}})
async def create_embeddings(body: EmbeddingRequest, request: Request, service: ServiceDep, record: RecordDep,
                            limits: LimitsDep) -> Response:
    check_model(service, body.model)
    inputs = body.inputs()
    check_texts(inputs, limits, "input")
    params = embed_params(body, service.info)
    prompts = await tokenize(service, inputs)
    size = service.info.hidden_size
    check_cost(len(prompts), sum(map(len, prompts)), len(prompts) * size, limits, "input")
    request_id = f"embd-{uuid.uuid4().hex}"
    streams = submit_all(service, [EngineRequest(f"{request_id}-{i}", ids, params) for i, ids in enumerate(prompts)])
    record.prompt_tokens = sum(map(len, prompts))
    record.completion_tokens = 0
    record.prompt = body.input  # logged only with GPT2_LOG_PROMPTS
    vectors: list[list[float]] = [[] for _ in prompts]
    try:
        await until_done_or_disconnected(collect(streams, vectors, record), request,
                                         time_limit(service.settings, body.timeout))
    finally:
        service.engine.close(streams)

    def build() -> dict:  # in a worker thread when the response is big
        encode = to_base64 if body.encoding_format == "base64" else lambda v: v
        return {"object": "list", "model": service.info.name,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": record.prompt_tokens, "total_tokens": record.prompt_tokens}}

    return await json_response(build, len(prompts) * size)


def embed_params(body: EmbeddingRequest, info: EngineInfo) -> SamplingParams:
    """The engine parameters of every input, once the options are checked against the model (400
    naming the field) and the defaults resolved."""
    L = info.num_layers
    layer = L if body.layer is None else body.layer
    if not -(L + 1) <= layer <= L:
        raise APIError(400, f"layer must lie in [0, {L}] (or [-{L + 1}, -1] from the end) for this model, got "
                       f"{body.layer}", param="layer", code="invalid_value")
    if body.dimensions is not None and body.dimensions != info.hidden_size:
        raise APIError(400, f"this model's embeddings have {info.hidden_size} dimensions and cannot be shortened; "
                       f"got dimensions={body.dimensions}", param="dimensions", code="invalid_value")
    standardize = info.embedding_reference is not None if body.standardize is None else body.standardize
    if standardize and info.embedding_reference is None:
        raise APIError(400, "standardize needs the statistics of a reference corpus, and this server has none "
                       "(GPT2_EMBEDDING_REFERENCE, docs/embeddings.md)", param="standardize", code="invalid_value")
    return SamplingParams(max_tokens=0, temperature=0.0, embed=body.to_embed_params(layer % (L + 1), standardize))


async def tokenize(service: Service, inputs: list[str | list[int]]) -> list[list[int]]:
    """Token ids of each input (texts encoded in one batch); 400 for an empty one, an id outside
    the vocabulary, or one longer than the model's context."""
    texts = [t for t in inputs if isinstance(t, str)]
    encoded = iter(await encode_texts(service.tokenizer, texts))
    prompts = [next(encoded) if isinstance(t, str) else list(t) for t in inputs]
    info, several = service.info, len(prompts) > 1
    for i, ids in enumerate(prompts):
        which = f" (input {i})" if several else ""
        if not ids:
            raise APIError(400, f"the input is empty{which}", param="input", code="invalid_value")
        if max(ids) >= info.vocab_size:
            raise APIError(400, f"token id {max(ids)} is outside the vocabulary [0, {info.vocab_size}){which}",
                           param="input", code="invalid_value")
        if len(ids) > info.max_model_len:
            raise APIError(400, f"the input has {len(ids)} tokens{which}, more than this model's maximum context "
                           f"length of {info.max_model_len} tokens; split it", param="input",
                           code="context_length_exceeded")
    return prompts


async def collect(streams: list[RequestStream], vectors: list[list[float]], record) -> None:
    """Wait for each input's vector (a prefill-only sequence ends with one output)."""

    async def one(i: int, stream: RequestStream) -> None:
        async for output in stream:
            if output.finished:
                check(output)
                vectors[i] = output.readout.embeddings[0]
                if output.stats is not None:
                    record.engine_stats.append(output.stats)

    await gather_all([one(i, s) for i, s in enumerate(streams)])


def to_base64(vector: list[float]) -> str:
    """float32, little-endian, base64: what OpenAI sends and its client decodes."""
    values = array.array("f", vector)
    if sys.byteorder != "little":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")
