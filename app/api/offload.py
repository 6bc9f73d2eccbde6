"""CPU work that would stall the event loop (and every stream and probe it serves) runs elsewhere
once it is big. Parsing and validating a large request body runs in a worker process (orjson and
pydantic-core hold the GIL for their whole run: in a thread they would stall the loop all the
same). Tokenizing and detokenizing run in a thread (the Rust tokenizer releases the GIL), a long
text in pieces that stop as soon as the request's token budget is spent. Large responses are built
and serialised in a thread, in slices (so the loop gets the GIL between them). Small work stays
inline, where a hop would cost more than the work."""

import asyncio
import contextlib
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from app.api.auth import require_key
from app.api.errors import APIError
from app.api.limits import Limits, refuse
from app.api.parsing import SMALL_BODY_BYTES, BodyLimits, Invalid, Refused, die_with_parent, parse_body
from app.model.tokenizer import Tokenizer

INLINE_CHARS = 2048  # ~0.5 ms of tokenizing
INLINE_TOKENS = 4096  # ~1 ms of detokenizing
INLINE_ENTRIES = 4096  # per-token entries in a response
LARGE_BODY_PLACES = 8  # large bodies read and parsed at once per API process (memory: 8 x GPT2_MAX_REQUEST_BYTES)


class TooManyTokens(Exception):
    """The texts have more tokens than the request's budget (counted at least this far)."""

    def __init__(self, counted: int):
        super().__init__(counted)
        self.counted = counted


async def encode_texts(tokenizer: Tokenizer, texts: list[str], budget: int | None = None) -> list[list[int]]:
    """Token ids of each text; TooManyTokens as soon as they are certainly more than `budget` in all
    (long texts are tokenized in pieces, in a thread of their own: the Rust tokenizer releases the GIL)."""
    if sum(map(len, texts)) <= INLINE_CHARS:
        encoded = [tokenizer.encode(t) for t in texts]
        if budget is not None and sum(map(len, encoded)) > budget:
            raise TooManyTokens(sum(map(len, encoded)))
        return encoded
    return await asyncio.get_running_loop().run_in_executor(TOKENIZING, encode_within, tokenizer, texts, budget)


# Long texts are tokenized one at a time per API process, each on one core (a piece per call: the
# Rust tokenizer would spread a batch over every core), so that others' requests keep a core.
TOKENIZING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpt2-tokenize")
PIECE_CHARS = 16384  # one piece of a long text (5-30 ms of tokenizing)
CUT_SLACK = 8  # tokens a cut inside a word may add to the count (measured: at most 1)
BOUNDARY = re.compile(r"(?s:.*)\S( )")  # the last space that follows a non-space


def encode_within(tokenizer: Tokenizer, texts: list[str], budget: int | None) -> list[list[int]]:
    """Token ids of each text, tokenized in pieces so that the work and memory stop at the budget.
    Pieces end where GPT-2's pre-tokenizer always splits (before a space that follows a non-space:
    no token spans it), so their tokens are the text's. A stretch without such a place (e.g. CJK
    text) is cut anywhere; the count is then off by a token or so per cut, which the budget check
    allows for, and the text is tokenized again whole if it is kept."""
    fast = tokenizer.hf.backend_tokenizer.encode_batch_fast
    pieces, owners, inexact = [], [], set()
    for i, text in enumerate(texts):
        for piece, exact in split(text):
            pieces.append(piece)
            owners.append(i)
            if not exact:
                inexact.add(i)
    encoded: list[list[int]] = [[] for _ in texts]
    counted = 0
    for piece, owner in zip(pieces, owners, strict=True):
        (encoding,) = fast([piece], add_special_tokens=False)
        counted += len(encoding)
        if budget is not None and counted > budget + CUT_SLACK * len(inexact):
            raise TooManyTokens(counted)
        encoded[owner] += encoding.ids
    for i in inexact:
        encoded[i] = tokenizer.encode(texts[i])
    if budget is not None and sum(map(len, encoded)) > budget:
        raise TooManyTokens(sum(map(len, encoded)))
    return encoded


def split(text: str) -> list[tuple[str, bool]]:
    """Pieces of at most PIECE_CHARS characters, and whether each cut is one the tokenizer makes too."""
    pieces, start = [], 0
    while len(text) - start > PIECE_CHARS:
        end = start + PIECE_CHARS
        found = BOUNDARY.match(text, start + 1, end)
        cut = found.start(1) if found else end
        pieces.append((text[start:cut], found is not None))
        start = cut
    pieces.append((text[start:], True))
    return pieces


async def decode_ids(tokenizer: Tokenizer, token_ids: list[int]) -> str:
    if len(token_ids) <= INLINE_TOKENS:
        return tokenizer.decode(token_ids)
    return await asyncio.to_thread(tokenizer.decode, token_ids)


async def json_response(build, entries: int) -> Response:
    """`build()` returns plain JSON data; it and its serialisation run in a thread when the
    response holds many per-token entries, serialised in slices (orjson holds the GIL while it
    runs: one call over a large response would stall the event loop all the same)."""
    if entries <= INLINE_ENTRIES:
        return Response(orjson.dumps(build()), media_type="application/json")
    body = await asyncio.to_thread(lambda: dumps_in_slices(build()))
    return Response(body, media_type="application/json")


SLICE = 2048  # list items serialised per orjson call


def dumps_in_slices(value) -> bytes:
    """orjson.dumps(value), the same bytes, made of calls that each hold the GIL briefly."""
    if isinstance(value, dict):
        return b"{" + b",".join(orjson.dumps(str(k)) + b":" + dumps_in_slices(v) for k, v in value.items()) + b"}"
    if isinstance(value, list) and len(value) > SLICE:
        return b"[" + b",".join(orjson.dumps(value[i : i + SLICE])[1:-1] for i in range(0, len(value), SLICE)) + b"]"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return b"[" + b",".join(dumps_in_slices(v) for v in value) + b"]"
    return orjson.dumps(value)


class OffloadRoute(APIRoute):
    """The API's POST routes: as FastAPI's, except for how the body is taken in. The caller is
    authenticated first (nothing is read for a refused one); a large body holds one of a few places
    while it is read and parsed (429 when none is free: memory stays bounded); then the body is
    parsed and validated by parsing.parse_body, in this process when it is small and in the body
    parser's worker process otherwise. The validated model then passes FastAPI's own validation as
    is (pydantic does not re-validate an instance of the model)."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        field = getattr(self, "body_field", None)
        model = field.field_info.annotation if field is not None else None

        async def route(request: Request):
            require_key(request)
            if model is None:
                return await handler(request)
            parser: BodyParser = request.app.state.gpt2.parser
            length = request.headers.get("content-length", "")
            large = not length.isdigit() or int(length) > SMALL_BODY_BYTES
            async with parser.place(large):
                body = await request.body()
                request._json = parser.result(await parser.parse(model, body, request.app.state.gpt2.limits))
            return await handler(request)

        return route


class BodyParser:
    """Parses request bodies; large ones in a worker process of its own (started when the app
    starts; replaced if it dies)."""

    def __init__(self, places: int = LARGE_BODY_PLACES):
        self.places = places
        self.taken = 0
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the worker process now (it imports in the background), not under the first large body."""
        self._executor().submit(int)

    def stop(self) -> None:
        """Stop the worker process (waits for it: at most the body it is parsing)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @contextlib.asynccontextmanager
    async def place(self, large: bool):
        """Hold one of the places for large bodies (none needed for a small one)."""
        if large and self.taken >= self.places:
            raise APIError(429, f"this server is reading {self.taken} large request bodies already; retry in a "
                           "moment", code="busy", headers={"Retry-After": "1"})
        self.taken += large
        try:
            yield
        finally:
            self.taken -= large

    async def parse(self, model: type, body: bytes, limits: Limits):
        body_limits = BodyLimits(limits.max_inputs, limits.max_input_chars, limits.max_request_tokens)
        if len(body) <= SMALL_BODY_BYTES:
            return parse_body(model, body, body_limits)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), parse_body, model, body, body_limits)
        except BrokenProcessPool:  # the worker died (killed, out of memory): a new one for the next body
            self._pool = None
            raise APIError(503, "the body parser's process died; retry", code="parser_unavailable",
                           headers={"Retry-After": "1"}) from None

    @staticmethod
    def result(parsed):
        """The validated model, or the error FastAPI's handlers turn into the 400 to answer."""
        if isinstance(parsed, Refused):
            raise refuse(parsed.message, parsed.param, parsed.setting)
        if isinstance(parsed, Invalid):
            raise RequestValidationError(parsed.errors)
        return parsed

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=die_with_parent)
        return self._pool
