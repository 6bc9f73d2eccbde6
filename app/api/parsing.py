"""Request bodies: JSON -> the route's pydantic model, with cheap refusals first.

`parse_body` runs in the API process for small bodies and in a worker process for large ones
(offload.py): orjson and pydantic-core hold the GIL for their whole run, so a thread would not free
the event loop. It imports nothing heavy (the worker process starts in a moment). Before full
validation it refuses what the request's limits would refuse anyway, counted on the parsed JSON
without validating it (inputs, characters, token ids); validation stops at the first bad element
of a list (FailFast in the schemas), and at most MAX_ERRORS problems are reported: a body of a
million bad ids gets one short error, at the cost of one.
"""

import contextlib
import ctypes
import json
import signal
from dataclasses import dataclass

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

MAX_ERRORS = 5
PR_SET_PDEATHSIG = 1  # prctl(2)
SMALL_BODY_BYTES = 65536  # parsed in the API process (~0.5 ms); a larger body goes to the parser process
BIG_FIELDS = ("prompt", "input", "context", "tokens")  # where a body's bulk is (texts or token ids)
_adapters: dict[type, TypeAdapter] = {}


@dataclass(frozen=True)
class BodyLimits:
    """The request limits that can be checked on the raw JSON (from app/api/limits.py's Limits)."""

    max_inputs: int
    max_input_chars: int
    max_request_tokens: int


@dataclass(frozen=True)
class Refused:
    """A body refused before validation: the 400 to answer (the setting is named as GPT2_<setting>)."""

    message: str
    param: str
    setting: str


@dataclass(frozen=True)
class Invalid:
    """A body that is not JSON, or not the route's model: pydantic's first errors (as plain data)."""

    errors: list[dict]


def parse_body(model: type[BaseModel], body: bytes, limits: BodyLimits) -> BaseModel | Refused | Invalid:
    try:
        data = load_json(body)
    except ValueError as exc:
        return Invalid([{"type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)), "msg": "JSON decode error",
                         "ctx": {"error": getattr(exc, "msg", str(exc))}}])
    refused = oversized(data, limits)
    if refused is not None:
        return refused
    adapter = _adapters.get(model) or _adapters.setdefault(model, TypeAdapter(model))
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        return Invalid([{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"],
                         **({"ctx": {"error": str(e["ctx"]["error"])}} if "error" in e.get("ctx", {}) else {})}
                        for e in exc.errors(include_url=False, include_input=False)[:MAX_ERRORS]])


def load_json(body: bytes) -> object:
    """Python's json for a small body (exact: a lone surrogate escape reaches the field's own check,
    which names the field; a number of over 4300 digits is refused before it is converted), orjson
    for a large one (4x faster; it refuses a lone surrogate outright, and turns an integer beyond 64
    bits into a float, which an integer field then refuses)."""
    return json.loads(body) if len(body) <= SMALL_BODY_BYTES else orjson.loads(body)


def die_with_parent() -> None:
    """The parser process's initializer: on Linux it gets SIGKILL when its API process dies, so that an
    API process killed outright leaves no parser behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def oversized(data: object, limits: BodyLimits) -> Refused | None:
    """What the request's limits would refuse after validation and tokenizing, found on the raw JSON
    (so a 4 MB body over them is never validated): too many inputs, characters or token ids."""
    if not isinstance(data, dict):
        return None
    chars = 0
    for name in BIG_FIELDS:
        value = data.get(name)
        if isinstance(value, str):
            chars += len(value)
        if not isinstance(value, list):
            continue
        nested = bool(value) and isinstance(value[0], (list, str))
        if nested and len(value) > limits.max_inputs and name != "tokens":
            return Refused(f"{len(value)} inputs in one request; at most {limits.max_inputs} are allowed", name,
                           "max_inputs")
        chars += sum(len(v) for v in value if isinstance(v, str))
        ids = sum(len(v) for v in value if isinstance(v, list)) if nested else len(value)
        if ids > limits.max_request_tokens:
            return Refused(f"{ids} token ids in `{name}`; one request may make the engine process at most "
                           f"{limits.max_request_tokens} tokens", name, "max_request_tokens")
    if chars > limits.max_input_chars:
        return Refused(f"{chars} characters of text in one request; at most {limits.max_input_chars} are allowed",
                       next(n for n in BIG_FIELDS if n in data), "max_input_chars")
    return None
