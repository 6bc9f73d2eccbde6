"""Per-request observability at the HTTP edge, as a pure ASGI middleware (no body buffering, works
with streaming): once a response is complete it records the request's series (metrics.py) and
writes one log line, a JSON object under GPT2_LOG_FORMAT=json:

    {"time": ..., "level": "info", "logger": "app.access", "message": "POST /v1/completions 200 812.4ms",
     "request_id": "...", "method": "POST", "endpoint": "/v1/completions", "status": 200,
     "duration_ms": 812.4, "prompt_tokens": 5, "completion_tokens": 16, "queue_time_ms": 0.3,
     "ttft_ms": 41.2, "reused_tokens": 0, "finish_reason": "length"}

The route leaves what it knows in the request's RequestRecord (app/api/record.py); the middleware
only reads it. The prompt text is logged only with GPT2_LOG_PROMPTS=true. Probes and /metrics log
at DEBUG unless they fail.

A request whose client disconnects before the response is complete is "aborted": logged and
counted with status 499 whatever was sent. An exception that escapes the app counts as 500.
"""

import logging
import os
import time
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.record import RequestRecord
from app.config import Settings
from app.engine.admission import SEQUENCES
from app.metrics import Metrics
from app.service import Service

log = logging.getLogger("app.access")

QUIET_ENDPOINTS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/ui"})  # probes, scrapes, the page
OTHER_ENDPOINT = "other"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, metrics: Metrics, settings: Settings):
        self.app = app
        self.fastapi_app = fastapi_app
        self.metrics = metrics
        self.log_prompts = settings.log_prompts
        self._paths: frozenset[str] = frozenset()
        self._num_routes = -1
        self._failed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        finished = False  # the last body message was sent, or the request was recorded
        disconnected = False

        async def watch_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not finished:
                disconnected = True
            return message

        async def watch_send(message: Message) -> None:
            nonlocal status, finished
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not finished and not message.get("more_body", False):
                finished = True  # record before the last write, so a client that reads its response
                self.record(scope, status, start, aborted=False)  # then scrapes sees it counted
            await send(message)

        try:
            await self.app(scope, watch_receive, watch_send)
        except BaseException as exc:  # CancelledError too: a disconnected client's route is cancelled
            if not finished:
                finished = True
                aborted = disconnected or isinstance(exc, (ClientDisconnect, OSError))
                self.record(scope, 500, start, aborted)
            raise
        if not finished:  # returned without completing the response: the client went away mid-stream
            finished = True
            self.record(scope, 500, start, aborted=disconnected)

    def endpoint(self, scope: Scope) -> str:
        """The route's path template; any path that is not a route is OTHER_ENDPOINT."""
        path = getattr(scope.get("route"), "path", None)
        if path:
            return path
        routes = self.fastapi_app.routes
        if len(routes) != self._num_routes:  # (re)read the app's paths, the documented ones included
            self._paths = frozenset(p for p in (getattr(r, "path", None) for r in routes) if isinstance(p, str))
            self._paths |= frozenset(api_paths(self.fastapi_app))
            self._num_routes = len(routes)
        return scope["path"] if scope["path"] in self._paths else OTHER_ENDPOINT

    def record(self, scope: Scope, status: int, start: float, aborted: bool) -> None:
        """Count the request and log its line; never raises (observability must not fail a request)."""
        duration = time.perf_counter() - start
        try:
            record: RequestRecord | None = (scope.get("state") or {}).get("record")
            endpoint = self.endpoint(scope)
            if record is None:
                self.metrics.observe_http(endpoint, status, duration, aborted)
            else:
                self.metrics.observe_http(endpoint, status, duration, aborted, record.error_code,
                                          record.prompt_tokens or 0, record.completion_tokens or 0,
                                          record.scored_tokens or 0)
                if record.caller is not None and endpoint not in QUIET_ENDPOINTS and endpoint != OTHER_ENDPOINT:
                    self.metrics.observe_caller(record.caller.tenant.key_class, status, aborted, record.engine_stats)
            if aborted:
                status = 499
            if endpoint in QUIET_ENDPOINTS and (status < 400 or status == 503):  # 503: loading or draining
                level = logging.DEBUG
            elif status >= 500:
                level = logging.WARNING
            else:
                level = logging.INFO
            if log.isEnabledFor(level):
                fields = request_fields(scope, record, endpoint, status, duration, aborted, self.log_prompts)
                log.log(level, "%s %s %d %.1fms%s", scope["method"], endpoint, status, duration * 1e3,
                        " (client went away)" if aborted else "", extra={"fields": fields})
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception("recording a request's metrics or log line failed (logged once)")


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def request_fields(scope: Scope, record: RequestRecord | None, endpoint: str, status: int, duration: float,
                   aborted: bool, log_prompts: bool) -> dict[str, Any]:
    """The request log line's fields (times in milliseconds)."""
    fields: dict[str, Any] = {"request_id": record.request_id if record else None, "method": scope["method"],
                              "endpoint": endpoint, "status": status, "duration_ms": ms(duration)}
    if endpoint != scope["path"]:
        fields["path"] = scope["path"]
    if record is not None:
        for key in ("prompt_tokens", "completion_tokens", "scored_tokens"):
            if getattr(record, key) is not None:
                fields[key] = getattr(record, key)
        stats = record.engine_stats
        if stats:  # one per engine sequence: the longest wait, the first token of any
            fields["queue_time_ms"] = ms(max(s.queue_time for s in stats))
            ttfts = [s.time_to_first_token for s in stats if s.time_to_first_token is not None]
            if ttfts:
                fields["ttft_ms"] = ms(min(ttfts))
            fields["reused_tokens"] = sum(s.cached_tokens for s in stats)  # prefix cache, over all sequences
        if record.finish_reasons:
            fields["finish_reason"] = ",".join(dict.fromkeys(str(r) for r in record.finish_reasons))
        if record.error_code:
            fields["error_code"] = record.error_code
        if log_prompts and record.prompt is not None:
            fields["prompt"] = record.prompt  # a string, strings, or token ids: all JSON
    if aborted:
        fields["aborted"] = True
    return fields


def api_paths(app: FastAPI) -> list[str]:
    """Paths of the app's documented routes (not /docs, /openapi.json, ...). Read from the OpenAPI
    schema: FastAPI keeps included routers' routes out of app.routes."""
    try:
        return list(app.openapi().get("paths", {}))
    except Exception:  # a schema that fails to build must not stop the metrics
        logging.getLogger(__name__).warning("cannot list the API's routes from its OpenAPI schema", exc_info=True)
        return [path for route in app.routes if isinstance(path := getattr(route, "path", None), str)]


def install_metrics(app: FastAPI) -> Metrics:
    """Serve /metrics from a registry of this app's own, record every HTTP request, and subscribe
    to the engine's stats once it is ready (GPT2_METRICS=false: no engine stats are recorded;
    /metrics still serves the HTTP series, the engine's state and the process collectors). Under
    several API processes (PROMETHEUS_MULTIPROC_DIR set by the supervisor) every process serves
    the sum of all."""
    state = app.state.gpt2
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics = Metrics(process_collectors=directory is None, multiprocess_dir=directory)
    app.state.metrics = metrics

    async def serve_metrics(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    app.add_api_route("/metrics", serve_metrics, methods=["GET"], tags=["health"], response_class=Response,
                      summary="Prometheus metrics (text format, or OpenMetrics when asked for)")
    app.add_middleware(ObservabilityMiddleware, fastapi_app=app, metrics=metrics, settings=state.settings)

    classes = state.callers.slot_classes()

    def sequences_by_class() -> dict[str, int]:
        counts = dict.fromkeys(state.callers.key_classes, 0)
        for slot, held in enumerate(state.shares.by_slot(SEQUENCES).tolist()):
            counts[classes[slot]] += held
        return counts

    metrics.key_classes(state.callers.key_classes, sequences_by_class)

    def on_ready(service: Service) -> None:
        metrics.known_endpoints(api_paths(app))
        metrics.bind(service.engine, service.info, record_engine_stats=state.settings.metrics)

    state.on_ready.append(on_ready)
    return metrics
