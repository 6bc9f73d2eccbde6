"""Per-request context, as a pure ASGI middleware (cheap: no body buffering): the request id (on
every response, 500s included), the count of requests in flight (for draining), the body size
limit and read timeout, and the per-key concurrency limit."""

import asyncio
import logging
import re
import secrets
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import AppState
from app.api.disconnect import ClientDisconnected
from app.api.errors import error_response
from app.api.record import RequestRecord

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, state: AppState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.state.settings
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        record = RequestRecord(request_id)
        scope.setdefault("state", {})["record"] = record
        id_header = (b"x-request-id", request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", []).append(id_header)
            await send(message)

        async def answer(status: int, message: str, code: str, headers: dict | None = None) -> None:
            record.error_code = code
            await error_response(status, message, code=code, headers=headers)(scope, receive, send_with_id)

        length = headers.get(b"content-length", b"")
        limit = settings.max_request_bytes
        if length.isdigit() and int(length) > limit:  # refuse before reading a byte
            return await answer(413, f"the request body has {int(length)} bytes; the limit is {limit} "
                                "(GPT2_MAX_REQUEST_BYTES)", "body_too_large")
        key = self._counted_key(headers)
        if key is not None and self.state.key_in_flight.get(key, 0) >= settings.key_concurrency:
            return await answer(429, f"this API key has {settings.key_concurrency} requests in flight already "
                                "(GPT2_KEY_CONCURRENCY); retry when one has finished", "key_concurrency",
                                {"Retry-After": "1"})
        received, body_done = 0, False

        async def receive_limited() -> Message:
            nonlocal received, body_done
            if body_done:  # what follows the body is the disconnect, which may take the whole response
                return await receive()
            try:  # a client that sends its body slowly holds a connection: bound it
                message = await asyncio.wait_for(receive(), settings.read_timeout)
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {settings.read_timeout:g} s "
                                    "(GPT2_READ_TIMEOUT)") from None
            received += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if received > limit:  # a chunked body without Content-Length
                raise HTTPException(413, f"the request body exceeds {limit} bytes (GPT2_MAX_REQUEST_BYTES)")
            return message

        self.state.in_flight += 1
        if key is not None:
            self.state.key_in_flight[key] = self.state.key_in_flight.get(key, 0) + 1
        try:
            await self.app(scope, receive_limited, send_with_id)
        except ClientDisconnected:
            pass  # its work was stopped; there is no one to answer (the request counts as aborted, 499)
        except Exception:
            if started:  # a stream broke mid-way: nothing can be answered any more
                raise
            log.exception("unhandled error on %s %s (request %s)", scope["method"], scope["path"], request_id)
            await answer(500, f"internal server error; request id {request_id} (also in X-Request-ID) finds it "
                         "in the server's log", "internal_error")
        finally:
            self.state.in_flight -= 1
            if key is not None:
                self.state.key_in_flight[key] -= 1
                if not self.state.key_in_flight[key]:
                    del self.state.key_in_flight[key]

    def _counted_key(self, headers: dict[bytes, bytes]) -> str | None:
        """The API key a request presents, when per-key concurrency is limited and it is a real key."""
        settings = self.state.settings
        if not settings.key_concurrency or not settings.api_keys:
            return None
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer":
            return None
        return next((key for key in settings.api_keys if secrets.compare_digest(token.encode(), key.encode())), None)
