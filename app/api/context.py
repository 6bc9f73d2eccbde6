"""Per-request context, as a pure ASGI middleware (cheap: no body buffering): the request id (on
every response, 500s included), the caller (its credentials read once: auth.py), the tasks of the
requests in flight (for draining, and cutting off at its end), the connection cap, the body size
limit and read deadline, and the per-key concurrency limit. All of it is decided before a byte of
the body is read."""

import asyncio
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import current_caller
from app.api.deps import AppState
from app.api.disconnect import ClientDisconnected
from app.api.errors import APIError, error_response
from app.api.record import RequestRecord
from app.engine.admission import REQUESTS

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
CLOSE = {"Connection": "close"}


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, state: AppState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state, settings, lifecycle = self.state, self.state.settings, self.state.lifecycle
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        record = RequestRecord(request_id)
        scope_state = scope.setdefault("state", {})
        scope_state["record"] = record
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

        cap = settings.max_connections
        if cap is not None and state.open_connections is not None and state.open_connections() > cap:
            return await answer(503, f"this server process has more than {cap} open connections "
                                "(GPT2_MAX_CONNECTIONS); retry on a new connection later", "too_many_connections",
                                {"Retry-After": "1", **CLOSE})
        authorization = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(authorization) > 1:  # which one would count? refuse rather than guess (auth and limits must agree)
            return await answer(400, "the request has more than one Authorization header; send exactly one",
                                "duplicate_authorization")
        caller = state.callers.identify(authorization[0] if authorization else None, scope.get("client"))
        scope_state["caller"] = record.caller = caller
        current_caller.set(caller)
        length = headers.get(b"content-length", b"")
        limit = settings.max_request_bytes
        if length.isdigit() and int(length) > limit:  # refuse before reading a byte
            return await answer(413, f"the request body has {int(length)} bytes; the limit is {limit} "
                                "(GPT2_MAX_REQUEST_BYTES)", "body_too_large")
        counted = caller.keyed and settings.key_concurrency > 0
        if counted and state.shares.held(REQUESTS, caller.tenant.slot) >= settings.key_concurrency:
            return await answer(429, f"this API key has {settings.key_concurrency} requests in flight already "
                                "(GPT2_KEY_CONCURRENCY); retry when one has finished", "key_concurrency",
                                {"Retry-After": "1"})
        deadline = asyncio.get_running_loop().time() + settings.read_timeout
        received, body_done = 0, False

        async def receive_limited() -> Message:
            nonlocal received, body_done
            if body_done:  # what follows the body is the disconnect, which may take the whole response
                return await receive()
            if lifecycle.draining:
                raise cut_by_drain()
            try:  # one deadline for the whole body, not one per read: a client dripping it is cut off
                async with asyncio.timeout_at(deadline) as timeout:
                    lifecycle.body_reads.add(timeout)
                    try:
                        message = await receive()
                    finally:
                        lifecycle.body_reads.discard(timeout)
            except TimeoutError:
                if lifecycle.draining:  # begin_drain() moved the deadline to now
                    raise cut_by_drain() from None
                raise APIError(408, f"the request body did not arrive within {settings.read_timeout:g} s "
                               "(GPT2_READ_TIMEOUT)", code="read_timeout", headers=CLOSE) from None
            received += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if received > limit:  # a chunked body without Content-Length
                raise APIError(413, f"the request body exceeds {limit} bytes (GPT2_MAX_REQUEST_BYTES)",
                               code="body_too_large", headers=CLOSE)
            return message

        task = asyncio.current_task()
        lifecycle.requests.add(task)
        if counted:
            state.count_request(caller.tenant.slot, 1)
        try:
            await self.app(scope, receive_limited, send_with_id)
        except ClientDisconnected:
            pass  # its work was stopped; there is no one to answer (the request counts as aborted, 499)
        except asyncio.CancelledError:
            if not lifecycle.cutting:  # not the drain's end: the server's own shutdown
                raise
            task.uncancel()  # cut off at the drain's end (lifecycle.cut_off): answer, or end the stream
            if not started:
                await answer(503, "the server is shutting down and this request did not finish in time; retry "
                             "on another replica", "draining", CLOSE)
        except Exception:
            if started:  # a stream broke mid-way: nothing can be answered any more
                raise
            log.exception("unhandled error on %s %s (request %s)", scope["method"], scope["path"], request_id)
            await answer(500, f"internal server error; request id {request_id} (also in X-Request-ID) finds it "
                         "in the server's log", "internal_error")
        finally:
            lifecycle.requests.discard(task)
            if counted:
                state.count_request(caller.tenant.slot, -1)


def cut_by_drain() -> APIError:
    return APIError(503, "the server is shutting down and stopped reading this request's body; retry on another "
                    "replica", code="draining", headers=CLOSE)
