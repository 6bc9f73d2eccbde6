"""CPU work that would stall the event loop (and every stream and probe it serves) runs in a
worker thread once it is big: parsing and validating request bodies, tokenizing, detokenizing,
serializing large responses. Small work stays inline, where a thread hop would cost more than the
work. (A worker thread holding the GIL lets the loop run every 5 ms, sys.getswitchinterval().)"""

import asyncio

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from app.model.tokenizer import Tokenizer

INLINE_CHARS = 2048  # ~0.5 ms of tokenizing
INLINE_TOKENS = 4096  # ~1 ms of detokenizing
INLINE_ENTRIES = 4096  # per-token entries in a response
INLINE_BODY_BYTES = 65536  # ~0.5 ms of JSON parsing


async def encode_texts(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (the fast tokenizer's batch call releases the GIL in its thread)."""
    if sum(map(len, texts)) <= INLINE_CHARS:
        return [tokenizer.encode(t) for t in texts]
    return await asyncio.to_thread(tokenizer.encode_many, texts)


async def decode_ids(tokenizer: Tokenizer, token_ids: list[int]) -> str:
    if len(token_ids) <= INLINE_TOKENS:
        return tokenizer.decode(token_ids)
    return await asyncio.to_thread(tokenizer.decode, token_ids)


async def json_response(build, entries: int) -> Response:
    """`build()` returns plain JSON data; it and its serialization run in a thread when the
    response holds many per-token entries."""
    if entries <= INLINE_ENTRIES:
        return Response(orjson.dumps(build()), media_type="application/json")
    body = await asyncio.to_thread(lambda: orjson.dumps(build()))
    return Response(body, media_type="application/json")


class OffloadRoute(APIRoute):
    """The API's routes: as FastAPI's, except that a large JSON body is parsed and validated in a
    worker thread (FastAPI does both on the event loop: ~10 ms per MB to parse, and validating
    a body of a million token ids takes ~0.3 s). The validated model then passes FastAPI's own
    validation as is (pydantic does not re-validate an instance of the model)."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        field = getattr(self, "body_field", None)
        adapter = TypeAdapter(field.field_info.annotation) if field is not None else None

        async def route(request: Request):
            if adapter is not None:
                body = await request.body()
                if len(body) > INLINE_BODY_BYTES:
                    request._json = await asyncio.to_thread(parse_and_validate, adapter, body)
            return await handler(request)

        return route


def parse_and_validate(adapter: TypeAdapter, body: bytes):
    """The body as the route's model, or the RequestValidationError FastAPI would raise. (orjson
    parses 4x faster than json, holding the GIL for less; unlike json it refuses a lone surrogate
    escape outright, so in a large body that is reported as invalid JSON, not by field.)"""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}]) from None
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None
