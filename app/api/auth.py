"""Who is calling: the credentials of a request, read once (RequestContextMiddleware, before any body
is read), for authentication, for the per-key limits and for fair sharing alike.

With GPT2_API_KEYS set, a caller is its key (a tenant per key; the key's class names it in the
metrics and weighs its share); a request without a valid key is refused before its body is read.
Without keys, callers are told apart by client address (scope["client"], which is the proxy's
unless uvicorn is told to trust X-Forwarded-For), hashed into a fixed number of slots.
"""

import hashlib
import zlib
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request

from app.api.errors import APIError
from app.config import ANONYMOUS_KEY_CLASS, Settings
from app.engine.admission import ADDRESS_BUCKETS, Tenant


@dataclass(frozen=True)
class Caller:
    tenant: Tenant
    keyed: bool  # it presented one of GPT2_API_KEYS
    allowed: bool  # keyed, or the server has no keys


class Callers:
    """The configured keys, and the share table's layout: a slot per key, then address buckets."""

    def __init__(self, settings: Settings):
        keys = settings.keys_by_class
        self.required = bool(keys)
        self._by_digest = {_digest(key.encode()): i for i, (_, key) in enumerate(keys)}
        weights = settings.key_class_weights
        self._tenants = [Tenant(f"key:{i}", name, i, weights.get(name, 1.0)) for i, (name, _) in enumerate(keys)]
        self._address_weight = weights.get(ANONYMOUS_KEY_CLASS, 1.0)
        self.slots = len(keys) + ADDRESS_BUCKETS
        self.weights = np.array([t.weight for t in self._tenants] + [self._address_weight] * ADDRESS_BUCKETS)
        self.key_classes = sorted({t.key_class for t in self._tenants} | {ANONYMOUS_KEY_CLASS})

    def identify(self, authorization: bytes | None, client: tuple | None) -> Caller:
        """The caller of a request with this Authorization header (None: none) from this client."""
        if self.required:
            scheme, _, token = (authorization or b"").partition(b" ")
            index = self._by_digest.get(_digest(token.strip())) if scheme.lower() == b"bearer" else None
            if index is not None:
                return Caller(self._tenants[index], keyed=True, allowed=True)
        address = client[0] if client else "unknown"
        slot = len(self._tenants) + zlib.crc32(address.encode()) % ADDRESS_BUCKETS  # the same in every process
        return Caller(Tenant(f"addr:{address}", ANONYMOUS_KEY_CLASS, slot, self._address_weight), keyed=False,
                      allowed=not self.required)

    def slot_classes(self) -> list[str]:
        """The key class of each slot of the share table."""
        return [t.key_class for t in self._tenants] + [ANONYMOUS_KEY_CLASS] * ADDRESS_BUCKETS


def _digest(token: bytes) -> bytes:
    # keys are looked up by their SHA-256: a dict lookup in time independent of how much of a key matches
    return hashlib.sha256(token).digest()


# the caller of the request being served (set by RequestContextMiddleware; read where sequences are
# submitted, app/api/submission.py, so that every route's work is counted for its caller)
current_caller: ContextVar[Caller | None] = ContextVar("current_caller", default=None)


def caller_of(request: Request) -> Caller:
    return request.scope["state"]["caller"]


def require_key(request: Request) -> Caller:
    """The caller, or 401 when GPT2_API_KEYS is set and the request has no valid key."""
    caller = caller_of(request)
    if not caller.allowed:
        raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    return caller
