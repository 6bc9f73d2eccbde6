"""CPU work that would stall the event loop (and every stream and probe it serves) runs in a
worker thread once it is big: tokenizing, detokenizing, serializing large responses. Small work
stays inline, where a thread hop would cost more than the work."""

import asyncio
import json

import orjson
from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

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


class OffloadedJSONRequest(Request):
    """A request whose large JSON body is parsed in a worker thread (FastAPI parses bodies on the
    event loop: ~10 ms per MB)."""

    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = json.loads(body) if len(body) <= INLINE_BODY_BYTES else await asyncio.to_thread(
                json.loads, body)
        return self._json


class OffloadRoute(APIRoute):
    """The API's routes: as FastAPI's, with OffloadedJSONRequest."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            return await handler(OffloadedJSONRequest(request.scope, request.receive))

        return route
