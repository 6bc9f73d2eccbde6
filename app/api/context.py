"""Per-request context, as a pure ASGI middleware (cheap: no body buffering):
the request id, the count of requests in flight (for draining), and the body size limit."""

import re
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import AppState
from app.api.errors import error_response
from app.api.record import RequestRecord

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, state: AppState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        record = RequestRecord(request_id)
        scope.setdefault("state", {})["record"] = record
        id_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append(id_header)
            await send(message)

        length = headers.get(b"content-length", b"")
        limit = self.state.settings.max_request_bytes
        if length.isdigit() and int(length) > limit:  # refuse before reading a byte
            record.error_code = "body_too_large"
            response = error_response(413, f"the request body has {int(length)} bytes; the limit is {limit} "
                                      "(GPT2_MAX_REQUEST_BYTES)", code="body_too_large")
            return await response(scope, receive, send_with_id)
        received = 0

        async def receive_limited() -> Message:  # a chunked body without Content-Length
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"the request body exceeds {limit} bytes (GPT2_MAX_REQUEST_BYTES)")
            return message

        self.state.in_flight += 1
        try:
            await self.app(scope, receive_limited, send_with_id)
        finally:
            self.state.in_flight -= 1
