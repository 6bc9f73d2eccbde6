"""Tokenizer endpoints, in the shapes vLLM serves and lm-evaluation-harness's remote tokenizer reads.

What they return is bounded like what they take: /tokenize at most GPT2_MAX_REQUEST_TOKENS tokens
(it stops tokenizing there), /detokenize at most GPT2_MAX_INPUT_CHARS characters."""

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import LimitsDep, ServiceDep, check_model
from app.api.errors import APIError
from app.api.limits import check_texts, refuse
from app.api.offload import OffloadRoute, TooManyTokens, decode_ids, encode_texts, json_response
from app.api.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)

router = APIRouter(tags=["tokenizer"], route_class=OffloadRoute)


@router.post("/tokenize", response_model=TokenizeResponse, summary="Text -> GPT-2 token ids")
async def tokenize(body: TokenizeRequest, service: ServiceDep, limits: LimitsDep) -> Response:
    check_model(service, body.model)
    check_texts([body.prompt], limits, "prompt")
    try:
        (tokens,) = await encode_texts(service.tokenizer, [body.prompt], limits.max_request_tokens)
    except TooManyTokens as exc:
        raise refuse(f"the text has more than {exc.counted} tokens; /tokenize returns at most "
                     f"{limits.max_request_tokens}", "prompt", "max_request_tokens") from None
    return await json_response(lambda: {"tokens": tokens, "count": len(tokens),
                                        "max_model_len": service.info.max_model_len}, len(tokens))


@router.post("/detokenize", response_model=DetokenizeResponse, summary="Token ids -> text")
async def detokenize(body: DetokenizeRequest, service: ServiceDep, limits: LimitsDep) -> DetokenizeResponse:
    check_model(service, body.model)
    if len(body.tokens) > limits.max_request_tokens:
        raise refuse(f"{len(body.tokens)} tokens to detokenize; at most {limits.max_request_tokens} are allowed",
                     "tokens", "max_request_tokens")
    vocab = service.info.vocab_size
    bad = next((t for t in body.tokens if t >= vocab), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary [0, {vocab})", param="tokens")
    text = await decode_ids(service.tokenizer, body.tokens)
    if len(text) > limits.max_input_chars:
        raise refuse(f"these tokens make {len(text)} characters of text; /detokenize returns at most "
                     f"{limits.max_input_chars}", "tokens", "max_input_chars")
    return DetokenizeResponse(prompt=text)


@router.get("/tokenizer_info", response_model=TokenizerInfo, summary="Special tokens and sizes of the tokenizer")
async def tokenizer_info(service: ServiceDep) -> TokenizerInfo:
    tok = service.tokenizer
    return TokenizerInfo(tokenizer_class=type(tok.hf).__name__, eos_token=tok.eos_token, eos_token_id=tok.eos_token_id,
                         bos_token=tok.bos_token, pad_token=tok.hf.pad_token, vocab_size=tok.vocab_size,
                         model_max_length=service.info.max_model_len)
