"""Prometheus metrics: engine stats and the HTTP edge turned into series (DESIGN.md, "Metrics").

`install_metrics(app)` is the one entry point: it gives the app its own CollectorRegistry (so
several apps in one process never clash), serves it on `GET /metrics` (Prometheus text or
OpenMetrics, by the Accept header), adds the HTTP observability middleware (request counts,
durations, rejections, aborts, token counters, the request log) and, once the engine is loaded,
subscribes to its stats (unless GPT2_METRICS=false) and sets the model-info series.

Which level each series counts at:
- per HTTP request (the middleware): `gpt2_request_duration_seconds{endpoint}`,
  `gpt2_requests_total{endpoint,status}`, `gpt2_requests_rejected_total{reason}`,
  `gpt2_requests_aborted_total` (the client went away before the response was complete; such
  requests count with status "499"), and the token counters `gpt2_prompt_tokens_total`,
  `gpt2_generation_tokens_total`, `gpt2_scored_tokens_total`: the `usage` of 2xx responses, so
  they equal the sums of what clients were told;
- per engine sequence (a completion choice, a scored text; an HTTP completion with n=1 and one
  prompt is one sequence), when it finishes for any reason: `gpt2_request_queue_seconds`,
  `gpt2_time_to_first_token_seconds` (sequences that produced a token),
  `gpt2_request_prompt_tokens`, `gpt2_request_generation_tokens` (not prompt-only scoring);
- per engine step: `gpt2_step_duration_seconds{phase}`, `gpt2_batch_size`,
  `gpt2_inter_token_latency_seconds` (one observation per generated token after the first);
- read at scrape time (no cost per step): `gpt2_requests_running`, `gpt2_requests_waiting`,
  `gpt2_kv_cache_usage_ratio`, `gpt2_device_memory_used_bytes` / `_total_bytes` (CUDA: bytes
  allocated by torch's caching allocator / the device's memory; MPS: torch's allocated / the
  recommended maximum; CPU: the process's resident set size / the machine's RAM, or the cgroup
  limit when that is lower).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from app.api.observability import ObservabilityMiddleware, api_paths
from app.engine.stats import RequestStats, StepStats

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.service import Service

log = logging.getLogger(__name__)

# Seconds. From 1 ms (a GPU decode step, a queue that is empty) to 10 min (a long CPU request):
# the same buckets read well on a GPU and a CPU replica, and none stops at 60 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
                   60.0, 120.0, 300.0, 600.0)
# Seconds per step / per token: finer between 1 ms and 1 s, where GPU and CPU steps live.
STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15,
                0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 2048, 4096, 8192)

PHASES = ("prefill", "decode", "mixed")
REJECTION_REASONS = ("queue_full", "draining", "not_ready", "too_long", "invalid", "unauthorized")
ABORTED_STATUS = "499"  # nginx's "client closed request"
MODEL_ENDPOINTS = ("/v1/completions", "/v1/score")
# what the model endpoints answer (app/api/errors.py), and 499 for a client that went away
MODEL_ENDPOINT_STATUSES = ("200", "400", "401", "404", "413", "429", ABORTED_STATUS, "500", "503")

# error code (request.state.error_code, set by app/api/errors.py) -> rejection reason
REJECTION_BY_CODE = {
    "queue_full": "queue_full",
    "draining": "draining",
    "not_ready": "not_ready",
    "context_length_exceeded": "too_long",
    "body_too_large": "too_long",
    "invalid_api_key": "unauthorized",
    "invalid_value": "invalid",
    "model_not_found": "invalid",
}
# when no code was set (e.g. a chunked body over the limit, a FastAPI HTTPException)
REJECTION_BY_STATUS = {400: "invalid", 401: "unauthorized", 413: "too_long", 429: "queue_full"}


def rejection_reason(status: int, code: str | None) -> str | None:
    """Why the service refused a request, or None if it did not (served, not found, a 5xx bug)."""
    reason = REJECTION_BY_CODE.get(code) if code else None
    if reason is None:
        reason = REJECTION_BY_STATUS.get(status)
    if reason is None and code and 400 <= status < 500:  # an API error with a code we do not know
        reason = "invalid"
    return reason


class Metrics:
    """Every series of one app, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, process_collectors: bool = True):
        r = self.registry = registry if registry is not None else CollectorRegistry()
        if process_collectors:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

        # --- per HTTP request -------------------------------------------------------------------
        self.request_duration = Histogram(
            "gpt2_request_duration_seconds", "End-to-end HTTP request duration, by route (every status).",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("gpt2_requests_total", "HTTP requests by route and status (499: client went away).",
                                ["endpoint", "status"], registry=r)
        self.rejected = Counter("gpt2_requests_rejected_total", "Requests refused before reaching the engine, by "
                                "reason.", ["reason"], registry=r)
        self.aborted = Counter("gpt2_requests_aborted_total", "Requests whose client disconnected before the "
                               "response was complete.", registry=r)
        self.prompt_tokens = Counter("gpt2_prompt_tokens_total", "Prompt tokens in the usage of successful "
                                     "responses.", registry=r)
        self.generation_tokens = Counter("gpt2_generation_tokens_total", "Generated (completion) tokens in the "
                                         "usage of successful responses.", registry=r)
        self.scored_tokens = Counter("gpt2_scored_tokens_total", "Tokens given a log-probability by /v1/score.",
                                     registry=r)

        # --- per engine sequence ----------------------------------------------------------------
        self.queue_time = Histogram("gpt2_request_queue_seconds", "Time a sequence waited before its first step.",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("gpt2_time_to_first_token_seconds", "Arrival to first generated token, per sequence.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.request_prompt_tokens = Histogram("gpt2_request_prompt_tokens", "Prompt tokens per sequence.",
                                               buckets=TOKEN_BUCKETS, registry=r)
        self.request_generation_tokens = Histogram("gpt2_request_generation_tokens", "Generated tokens per "
                                                   "sequence.", buckets=TOKEN_BUCKETS, registry=r)

        # --- per engine step --------------------------------------------------------------------
        self.step_duration = Histogram("gpt2_step_duration_seconds", "Engine step duration by phase.", ["phase"],
                                       buckets=STEP_BUCKETS, registry=r)
        self.batch_size = Histogram("gpt2_batch_size", "Sequences per engine step.", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.inter_token_latency = Histogram("gpt2_inter_token_latency_seconds", "Time between consecutive tokens "
                                             "of a sequence.", buckets=STEP_BUCKETS, registry=r)

        # --- state, read at scrape time ---------------------------------------------------------
        self.running = Gauge("gpt2_requests_running", "Sequences holding a KV-cache slot.", registry=r)
        self.waiting = Gauge("gpt2_requests_waiting", "Sequences queued for a slot.", registry=r)
        self.kv_cache_usage = Gauge("gpt2_kv_cache_usage_ratio", "Fraction of KV-cache slots in use.", registry=r)
        self.model_info = Gauge("gpt2_model_info", "The served model (value 1).",
                                ["model", "device", "dtype", "load_format"], registry=r)
        self.device_memory_used = Gauge("gpt2_device_memory_used_bytes", "CUDA/MPS: bytes allocated by torch; "
                                        "CPU: the process's resident set size.", registry=r)
        self.device_memory_total = Gauge("gpt2_device_memory_total_bytes", "CUDA/MPS: the device's memory; CPU: "
                                         "the machine's RAM (or the cgroup limit).", registry=r)

        # Series that exist (at 0) before the first event, so dashboards and alerts have data.
        self._steps = {phase: self.step_duration.labels(phase) for phase in PHASES}
        self._rejected = {reason: self.rejected.labels(reason) for reason in REJECTION_REASONS}
        self._listener_failed = False

    # --- HTTP ------------------------------------------------------------------------------------
    def known_endpoints(self, paths: Iterable[str]) -> None:
        """Start the series of these routes at 0 (status 200; the model endpoints' error statuses
        too), so they exist before traffic: rate() cannot see the first increment of a series
        that appears with it, and error-ratio queries need their numerator."""
        for path in paths:
            self.request_duration.labels(path)
            for status in MODEL_ENDPOINT_STATUSES if path in MODEL_ENDPOINTS else ("200",):
                self.requests.labels(path, status)

    def observe_http(self, endpoint: str, status: int, duration: float, state: dict, aborted: bool) -> None:
        """One finished HTTP request; `state` is its request.state (tokens, error code)."""
        self.request_duration.labels(endpoint).observe(duration)
        if aborted:
            self.requests.labels(endpoint, ABORTED_STATUS).inc()
            self.aborted.inc()
            return
        self.requests.labels(endpoint, str(status)).inc()
        if 200 <= status < 300:
            self.prompt_tokens.inc(state.get("prompt_tokens") or 0)
            self.generation_tokens.inc(state.get("completion_tokens") or 0)
            self.scored_tokens.inc(state.get("scored_tokens") or 0)
        elif status >= 400:
            reason = rejection_reason(status, state.get("error_code"))
            if reason is not None:
                self._rejected[reason].inc()

    # --- the engine ------------------------------------------------------------------------------
    def on_step(self, stats: StepStats) -> None:
        """Engine step listener (the loop thread): a few observe() calls, never raises."""
        try:
            self._steps[stats.phase].observe(stats.duration)
            self.batch_size.observe(stats.batch_size)
            observe = self.inter_token_latency.observe
            for latency in stats.inter_token_latencies:
                observe(latency)
        except Exception:  # a metrics bug must never stop the engine loop
            self._log_failure()

    def on_request(self, stats: RequestStats) -> None:
        """Engine request listener (loop thread or an aborting caller's): never raises."""
        try:
            self.queue_time.observe(stats.queue_time)
            if stats.time_to_first_token is not None:
                self.ttft.observe(stats.time_to_first_token)
            self.request_prompt_tokens.observe(stats.prompt_tokens)
            if stats.generation_tokens or not stats.scored_tokens:  # not a prompt-only scoring sequence
                self.request_generation_tokens.observe(stats.generation_tokens)
        except Exception:
            self._log_failure()

    def _log_failure(self) -> None:
        if not self._listener_failed:
            self._listener_failed = True
            log.exception("recording engine metrics failed (logged once; the engine goes on)")

    def attach(self, engine: Engine) -> None:
        """Subscribe to the engine's stats."""
        engine.step_listeners.append(self.on_step)
        engine.request_listeners.append(self.on_request)

    def detach(self, engine: Engine) -> None:
        engine.step_listeners.remove(self.on_step)
        engine.request_listeners.remove(self.on_request)

    def watch(self, engine: Engine) -> None:
        """Read the engine's queue and cache occupancy at scrape time."""
        self.running.set_function(lambda: engine.num_running)
        self.waiting.set_function(lambda: engine.num_waiting)
        self.kv_cache_usage.set_function(lambda: engine.scheduler.kv_cache_usage)

    def bind(self, service: Service, record_engine_stats: bool = True) -> None:
        """The engine is loaded: model info, scrape-time gauges, and (unless off) the engine's stats."""
        info = service.info
        self.model_info.labels(info.name, info.device, info.dtype, info.load_format).set(1)
        used, total = device_memory_readers(info.device)
        self.device_memory_used.set_function(used)
        self.device_memory_total.set_function(total)
        engine = service.engine.engine
        self.watch(engine)
        if record_engine_stats:
            self.attach(engine)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


# --- device memory ---------------------------------------------------------------------------

def device_memory_readers(device: str) -> tuple[Callable[[], float], Callable[[], float]]:
    """(used, total) byte readers for the model's device; see the module docstring."""
    try:
        import torch

        if device.startswith("cuda"):
            dev = torch.device(device)
            total = torch.cuda.get_device_properties(dev).total_memory
            return (lambda: torch.cuda.memory_allocated(dev)), (lambda: total)
        if device.startswith("mps"):
            total = torch.mps.recommended_max_memory()
            return torch.mps.current_allocated_memory, (lambda: total)
    except Exception:  # a broken accelerator query must not stop start-up; report the host instead
        log.warning("cannot read %s memory; reporting the process's instead", device, exc_info=True)
    total = host_memory_total()
    return process_rss, (lambda: total)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_rss() -> float:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the peak RSS is the best the standard library offers
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def host_memory_total() -> float:
    """The machine's RAM, or the cgroup (container) memory limit when that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit() and (total == 0 or 0 < int(limit) < total):
            total = int(limit)
        break
    return float(total)


# --- the app ---------------------------------------------------------------------------------

def install_metrics(app: FastAPI) -> Metrics:
    """Serve /metrics from a registry of this app's own, record every HTTP request, and subscribe
    to the engine's stats once it is loaded (GPT2_METRICS=false: no engine stats are recorded;
    /metrics still serves the HTTP series, the gauges and the process collectors)."""
    state = app.state.gpt2
    metrics = Metrics()
    app.state.metrics = metrics

    async def serve_metrics(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    app.add_api_route("/metrics", serve_metrics, methods=["GET"], tags=["health"], response_class=Response,
                      summary="Prometheus metrics (text format, or OpenMetrics when asked for)")
    app.add_middleware(ObservabilityMiddleware, fastapi_app=app, metrics=metrics, settings=state.settings)

    def on_ready(service: Service) -> None:
        metrics.known_endpoints(api_paths(app))
        metrics.bind(service, record_engine_stats=state.settings.metrics)

    state.on_ready.append(on_ready)
    return metrics
