"""Prometheus metrics: engine stats and the HTTP edge turned into series (this module is where the
names the team's DESIGN.md lists under "Metrics" are defined).

`Metrics` holds every series of one API process in its own CollectorRegistry (so several apps in
one process never clash). app/api/observability.py serves it on `GET /metrics` and feeds it the
HTTP side; `bind()` subscribes it to the engine client's stats. With several API processes
(GPT2_API_SERVERS > 1) the series live in prometheus_client's multiprocess files and any process
serves the sum (`multiprocess=True`).

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
- per engine step (recorded by one API process): `gpt2_step_duration_seconds{phase}`,
  `gpt2_batch_size`, `gpt2_inter_token_latency_seconds` (one observation per generated token after
  the first);
- the engine's state after its latest step: `gpt2_requests_running`, `gpt2_requests_waiting`,
  `gpt2_kv_cache_usage_ratio`, `gpt2_device_memory_used_bytes` / `_total_bytes` (CUDA: bytes
  allocated by torch's caching allocator / the device's memory; MPS: torch's allocated / the
  recommended maximum; CPU: the engine process's resident set size / the machine's RAM, or the
  cgroup limit when that is lower), and `gpt2_engine_up` (0 once the engine died or hung);
- the engine process's own CPU time and memory, read from /proc at scrape time:
  `gpt2_engine_process_*` (the API process's are the usual `process_*`);
- fair sharing, by key class (the class of an API key, `default` for keys given without one,
  `anonymous` for callers without keys; never a key itself, so the label set is what
  GPT2_API_KEYS names): `gpt2_key_class_requests_total{key_class,status}` (per HTTP request),
  `gpt2_key_class_queue_seconds{key_class}` (per engine sequence of a completed request), and
  `gpt2_key_class_sequences{key_class}`, the sequences admitted and not finished, read at scrape
  time from the admission table all API processes share (app/engine/admission.py).
"""

from __future__ import annotations

import bisect
import collections
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from app.engine.protocol import RequestStats, StepStats

if TYPE_CHECKING:
    from app.engine.client import EngineClient
    from app.engine.protocol import EngineInfo

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
MODEL_ENDPOINTS = ("/v1/completions", "/v1/score", "/v1/embeddings")
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


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """histogram.observe(amount), `count` times, for the price of one. prometheus_client has no
    weighted observe; this does what Histogram.observe does (tests/unit/test_metrics.py checks
    that the series are the same)."""
    histogram._sum.inc(amount * count)
    histogram._buckets[bisect.bisect_left(histogram._upper_bounds, amount)].inc(count)


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

    def __init__(self, process_collectors: bool = True, multiprocess_dir: str | None = None):
        r = self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir  # the series of every API process are summed at scrape
        if multiprocess_dir is not None:
            multiprocess.MultiProcessCollector(r, multiprocess_dir)
            r = None  # the series themselves live in the multiprocess files, not in a registry
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._engine_pid = 0
        self._engine_process = ProcessCollector(namespace="gpt2_engine", pid=lambda: self._engine_pid, registry=None)

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
        self.prefill_tokens = Counter("gpt2_prefill_tokens_total", "Prompt tokens the model computed (those reused "
                                      "from the prefix cache are not).", registry=r)
        self.prefix_queried = Counter("gpt2_prefix_cache_queried_tokens_total", "Prompt tokens of sequences that "
                                      "looked for a reusable prefix.", registry=r)
        self.prefix_hits = Counter("gpt2_prefix_cache_hit_tokens_total", "Prompt tokens whose keys and values (and "
                                   "prompt scores) were reused instead of computed.", registry=r)
        self.prefix_evictions = Counter("gpt2_prefix_cache_evictions_total", "Kept prefixes dropped to make room "
                                        "for a new sequence.", registry=r)
        self.inter_token_latency = Histogram("gpt2_inter_token_latency_seconds", "Time between consecutive tokens "
                                             "of a sequence.", buckets=STEP_BUCKETS, registry=r)

        # --- the engine's state after its latest step -------------------------------------------
        # (multiprocess_mode: how the API processes' values combine; one process sets these)
        self.running = Gauge("gpt2_requests_running", "Sequences holding a KV-cache slot.", registry=r,
                             multiprocess_mode="livesum")
        self.waiting = Gauge("gpt2_requests_waiting", "Sequences queued for a slot.", registry=r,
                             multiprocess_mode="livesum")
        self.kv_cache_usage = Gauge("gpt2_kv_cache_usage_ratio", "Fraction of KV-cache slots in use.", registry=r,
                                    multiprocess_mode="livesum")
        self.model_info = Gauge("gpt2_model_info", "The served model and how the engine runs it (value 1); "
                                "cuda_graphs: the decode batch sizes captured as CUDA graphs, or off.",
                                ["model", "device", "dtype", "load_format", "cuda_graphs"], registry=r,
                                multiprocess_mode="livemax")
        self.device_memory_used = Gauge("gpt2_device_memory_used_bytes", "CUDA/MPS: bytes allocated by torch; "
                                        "CPU: the engine process's resident set size.", registry=r,
                                        multiprocess_mode="livemax")
        self.device_memory_total = Gauge("gpt2_device_memory_total_bytes", "CUDA/MPS: the device's memory; CPU: "
                                         "the machine's RAM (or the cgroup limit).", registry=r,
                                         multiprocess_mode="livemax")
        # with several API processes: up if any of them sees it up (one still starting reads 0 until it
        # connects; on a death every one of them sets 0)
        self.engine_up = Gauge("gpt2_engine_up", "1 while the engine process runs and answers; 0 before it is "
                               "ready and once it died or hung.", registry=r, multiprocess_mode="livemax")

        # --- fair sharing, by key class ----------------------------------------------------------
        self.key_class_requests = Counter("gpt2_key_class_requests", "HTTP requests to the API by the caller's key "
                                          "class and status (499: client went away).", ["key_class", "status"],
                                          registry=r)
        self.key_class_queue_time = Histogram("gpt2_key_class_queue_seconds", "Time a sequence of a completed "
                                              "request waited before its first step, by the caller's key class.",
                                              ["key_class"], buckets=LATENCY_BUCKETS, registry=r)

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

    def observe_http(self, endpoint: str, status: int, duration: float, aborted: bool = False,
                     error_code: str | None = None, prompt_tokens: int = 0, completion_tokens: int = 0,
                     scored_tokens: int = 0) -> None:
        """One finished HTTP request: its route, status and duration; the usage it reported (2xx);
        the error code it was refused with (4xx)."""
        self.request_duration.labels(endpoint).observe(duration)
        if aborted:
            self.requests.labels(endpoint, ABORTED_STATUS).inc()
            self.aborted.inc()
            return
        self.requests.labels(endpoint, str(status)).inc()
        if 200 <= status < 300:
            self.prompt_tokens.inc(prompt_tokens)
            self.generation_tokens.inc(completion_tokens)
            self.scored_tokens.inc(scored_tokens)
        elif status >= 400:
            reason = rejection_reason(status, error_code)
            if reason is not None:
                self._rejected[reason].inc()

    def key_classes(self, classes: Iterable[str], counts: Callable[[], dict[str, int]]) -> None:
        """The key classes callers may have (their series start at 0), and where to read each
        class's sequences in flight at scrape time."""
        for name in classes:
            self.key_class_queue_time.labels(name)
            self.key_class_requests.labels(name, "200")
        self.registry.register(KeyClassCollector(counts))

    def observe_caller(self, key_class: str, status: int, aborted: bool, stats: Iterable[RequestStats]) -> None:
        """One finished API request of a caller of this key class, and its sequences' queue times."""
        self.key_class_requests.labels(key_class, ABORTED_STATUS if aborted else str(status)).inc()
        queue_time = self.key_class_queue_time.labels(key_class)
        for stat in stats:
            queue_time.observe(stat.queue_time)

    # --- the engine ------------------------------------------------------------------------------
    def on_state(self, stats: StepStats) -> None:
        """The engine's state after a step (running, waiting, cache, memory); never raises."""
        try:
            self.running.set(stats.num_running)
            self.waiting.set(stats.num_waiting)
            self.kv_cache_usage.set(stats.kv_cache_usage)
            if stats.memory_used is not None:
                self.device_memory_used.set(stats.memory_used)
        except Exception:  # a metrics bug must never stop the outputs from flowing
            self._log_failure()

    def on_step(self, stats: StepStats) -> None:
        """Engine step listener: the state, and the step's own numbers; never raises."""
        self.on_state(stats)
        try:
            if stats.phase in self._steps:  # "idle": a state report without a step
                self._steps[stats.phase].observe(stats.duration)
                self.batch_size.observe(stats.batch_size)
                # the sequences that decoded in the step before share one latency: observe each
                # distinct value once, with its count (an observe() per token costs ~5 us)
                for latency, count in collections.Counter(stats.inter_token_latencies).items():
                    observe_many(self.inter_token_latency, latency, count)
                if stats.num_prefill_tokens:
                    self.prefill_tokens.inc(stats.num_prefill_tokens)
                if stats.prefix_queried_tokens:
                    self.prefix_queried.inc(stats.prefix_queried_tokens)
                    self.prefix_hits.inc(stats.prefix_hit_tokens)
                if stats.prefix_evictions:
                    self.prefix_evictions.inc(stats.prefix_evictions)
        except Exception:
            self._log_failure()

    def on_request(self, stats: RequestStats) -> None:
        """Engine request listener (a finished sequence): never raises."""
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
            log.exception("recording engine metrics failed (logged once; serving goes on)")

    def bind(self, engine: EngineClient, info: EngineInfo, record_engine_stats: bool = True) -> None:
        """The engine is ready: model info, its process, its state, and (unless off) its stats."""
        graphs = ",".join(map(str, info.cuda_graphs)) or "off"
        self.model_info.labels(info.name, info.device, info.dtype, info.load_format, graphs).set(1)
        self.device_memory_total.set(info.memory_total)
        self.device_memory_used.set(info.memory_used)
        self.engine_up.set(1)
        if not self._engine_pid:
            self.registry.register(self._engine_process)
        self._engine_pid = info.pid
        engine.death_listeners.append(lambda reason: self.engine_up.set(0))
        if record_engine_stats:
            engine.step_listeners.append(self.on_step)
            engine.request_listeners.append(self.on_request)
        else:
            engine.step_listeners.append(self.on_state)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class KeyClassCollector:
    """gpt2_key_class_sequences{key_class}, read from the admission table when scraped (so every
    API process reports the same, global, numbers)."""

    def __init__(self, counts: Callable[[], dict[str, int]]):
        self.counts = counts

    def collect(self):
        family = GaugeMetricFamily("gpt2_key_class_sequences", "Engine sequences admitted and not finished (running "
                                   "or waiting), by the caller's key class, over every API process.",
                                   labels=["key_class"])
        for name, value in sorted(self.counts().items()):
            family.add_metric([name], value)
        yield family
