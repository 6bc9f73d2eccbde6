"""metrics.py and the observability middleware without a model: series, labels, buckets, logs."""

import json
import logging
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.context import RequestContextMiddleware
from app.api.deps import AppState
from app.api.errors import APIError, install_error_handlers
from app.api.observability import install_metrics
from app.api.record import RecordDep
from app.config import Settings
from app.engine.memory import device_memory_readers
from app.engine.protocol import RequestStats, StepStats
from app.logs import JSONFormatter, TextFormatter
from app.metrics import (
    BATCH_BUCKETS,
    LATENCY_BUCKETS,
    PHASES,
    REJECTION_REASONS,
    STEP_BUCKETS,
    Metrics,
    observe_many,
    rejection_reason,
)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset], float]:
    body, _ = metrics.render(None)
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def value(metrics: Metrics, name: str, **labels) -> float:
    return samples(metrics).get((name, frozenset(labels.items())), 0.0)


# --- series and buckets ----------------------------------------------------------------------

def test_every_seconds_histogram_reaches_past_a_minute_and_down_to_a_millisecond():
    for buckets in (LATENCY_BUCKETS, STEP_BUCKETS):
        assert buckets == tuple(sorted(buckets))
        assert buckets[0] <= 0.001, "GPU steps and empty queues need millisecond buckets"
        assert buckets[-1] > 60, "no histogram may cap at 60 s"
    assert BATCH_BUCKETS[0] == 1 and BATCH_BUCKETS[-1] >= 512


def test_series_known_in_advance_start_at_zero():
    metrics = Metrics(process_collectors=False)
    got = samples(metrics)
    for reason in REJECTION_REASONS:
        assert got[("gpt2_requests_rejected_total", frozenset({("reason", reason)}))] == 0
    for phase in PHASES:
        assert got[("gpt2_step_duration_seconds_count", frozenset({("phase", phase)}))] == 0
    assert got[("gpt2_requests_aborted_total", frozenset())] == 0
    assert got[("gpt2_scored_tokens_total", frozenset())] == 0


def test_each_app_has_its_own_registry():
    first, second = Metrics(), Metrics()  # the process collectors too: no "Duplicated timeseries"
    first.on_step(StepStats("decode", 0.01, 4, 0, 4, [0.01] * 4))
    assert value(first, "gpt2_batch_size_count") == 1
    assert value(second, "gpt2_batch_size_count") == 0
    assert ("process_cpu_seconds_total", frozenset()) in samples(first)


def test_step_stats_become_phase_batch_and_inter_token_series():
    metrics = Metrics(process_collectors=False)
    metrics.on_step(StepStats("prefill", 0.2, 3, 300, 0))
    metrics.on_step(StepStats("decode", 0.05, 3, 0, 3, [0.05, 0.06, 0.07]))
    metrics.on_step(StepStats("mixed", 0.1, 4, 50, 3, [0.1, 0.1, 0.1]))
    assert value(metrics, "gpt2_step_duration_seconds_count", phase="prefill") == 1
    assert value(metrics, "gpt2_step_duration_seconds_sum", phase="decode") == pytest.approx(0.05)
    assert value(metrics, "gpt2_step_duration_seconds_count", phase="mixed") == 1
    assert value(metrics, "gpt2_batch_size_count") == 3
    assert value(metrics, "gpt2_batch_size_sum") == 10
    assert value(metrics, "gpt2_inter_token_latency_seconds_count") == 6
    assert value(metrics, "gpt2_inter_token_latency_seconds_bucket", le="0.06") == 2


def test_observe_many_is_observe_repeated():
    once, many = Metrics(process_collectors=False), Metrics(process_collectors=False)
    values = [0.0004, 0.001, 0.0011, 0.05, 0.05, 3.0, 200.0]  # on, between and beyond the bounds
    for v in values:
        for _ in range(3):
            once.inter_token_latency.observe(v)
        observe_many(many.inter_token_latency, v, 3)
    series = [k for k in samples(once) if k[0].startswith("gpt2_inter_token_latency")]
    assert len(series) > 20 and all(samples(once)[k] == pytest.approx(samples(many)[k]) for k in series)


def test_a_broken_step_never_raises_into_the_engine(caplog):
    metrics = Metrics(process_collectors=False)
    with caplog.at_level(logging.ERROR, logger="app.metrics"):
        metrics.on_step(StepStats("decode", "fast", 1, 0, 1))  # a duration that is not a number
        metrics.on_step(SimpleNamespace())  # not even StepStats
        metrics.on_request(SimpleNamespace())  # not even RequestStats
    assert len(caplog.records) == 1, "logged once, not once per step"


def test_request_stats_are_per_sequence():
    metrics = Metrics(process_collectors=False)
    metrics.on_request(RequestStats("a", 10, 5, 0.01, 0.2, 1.0, "length", 0))
    metrics.on_request(RequestStats("b", 7, 0, 0.02, None, 0.05, "abort", 0))  # aborted before a token
    metrics.on_request(RequestStats("c", 12, 0, 0.03, None, 0.1, "length", 11))  # prompt-only scoring
    assert value(metrics, "gpt2_request_queue_seconds_count") == 3
    assert value(metrics, "gpt2_time_to_first_token_seconds_count") == 1
    assert value(metrics, "gpt2_time_to_first_token_seconds_sum") == pytest.approx(0.2)
    assert value(metrics, "gpt2_request_prompt_tokens_sum") == 29
    assert value(metrics, "gpt2_request_generation_tokens_count") == 2  # the scoring sequence is not one


def test_token_counters_follow_the_usage_of_successful_responses():
    metrics = Metrics(process_collectors=False)
    metrics.observe_http("/v1/completions", 200, 0.5, prompt_tokens=4, completion_tokens=9)
    metrics.observe_http("/v1/score", 200, 0.1, prompt_tokens=6, completion_tokens=0, scored_tokens=5)
    metrics.observe_http("/v1/completions", 400, 0.1, error_code="invalid_value", prompt_tokens=100)
    metrics.observe_http("/v1/completions", 200, 3.0, aborted=True, prompt_tokens=50)  # the client went away
    assert value(metrics, "gpt2_prompt_tokens_total") == 10
    assert value(metrics, "gpt2_generation_tokens_total") == 9
    assert value(metrics, "gpt2_scored_tokens_total") == 5
    assert value(metrics, "gpt2_requests_total", endpoint="/v1/completions", status="200") == 1
    assert value(metrics, "gpt2_requests_total", endpoint="/v1/completions", status="499") == 1
    assert value(metrics, "gpt2_requests_aborted_total") == 1
    assert value(metrics, "gpt2_request_duration_seconds_count", endpoint="/v1/completions") == 3


@pytest.mark.parametrize(("status", "code", "reason"), [
    (429, "queue_full", "queue_full"),
    (503, "draining", "draining"),
    (503, "not_ready", "not_ready"),
    (400, "context_length_exceeded", "too_long"),
    (413, "body_too_large", "too_long"),
    (413, None, "too_long"),  # a chunked body over the limit: Starlette's HTTPException, no code
    (401, "invalid_api_key", "unauthorized"),
    (400, "invalid_value", "invalid"),
    (400, None, "invalid"),
    (404, "model_not_found", "invalid"),
    (422, "some_new_code", "invalid"),
    (404, None, None),  # no such route: not a refusal of a request the API knows
    (405, None, None),
    (500, "engine_error", None),  # our failure, not a rejection
    (500, None, None),
])
def test_rejection_reasons(status, code, reason):
    assert rejection_reason(status, code) == reason
    metrics = Metrics(process_collectors=False)
    metrics.observe_http("/v1/completions", status, 0.01, error_code=code)
    rejected = {r: value(metrics, "gpt2_requests_rejected_total", reason=r) for r in REJECTION_REASONS}
    assert rejected == {r: float(r == reason) for r in REJECTION_REASONS}


def test_device_memory_on_cpu_is_the_process_and_the_machine():
    used, total = device_memory_readers("cpu")
    assert 10 * 2**20 < used() < total()


def fake_engine() -> tuple[SimpleNamespace, SimpleNamespace]:
    info = SimpleNamespace(name="gpt2", device="cpu", dtype="float32", load_format="dummy", memory_total=8e9,
                           memory_used=5e8, pid=1, cuda_graphs=[])
    return SimpleNamespace(step_listeners=[], request_listeners=[], death_listeners=[]), info


@pytest.mark.parametrize("record", [True, False])
def test_bind_sets_model_info_gauges_and_listeners(record):
    metrics, (engine, info) = Metrics(process_collectors=False), fake_engine()
    metrics.bind(engine, info, record_engine_stats=record)
    assert (engine.step_listeners, engine.request_listeners) == (([metrics.on_step], [metrics.on_request])
                                                                 if record else ([metrics.on_state], []))
    assert value(metrics, "gpt2_model_info", model="gpt2", device="cpu", dtype="float32", load_format="dummy",
                 cuda_graphs="off") == 1
    assert value(metrics, "gpt2_engine_up") == 1 and value(metrics, "gpt2_device_memory_total_bytes") == 8e9
    engine.step_listeners[0](StepStats("decode", 0.01, 3, 0, 3, [], num_running=3, num_waiting=2,
                                       kv_cache_usage=0.75, memory_used=1e9))
    assert value(metrics, "gpt2_requests_running") == 3
    assert value(metrics, "gpt2_requests_waiting") == 2
    assert value(metrics, "gpt2_kv_cache_usage_ratio") == 0.75
    assert value(metrics, "gpt2_device_memory_used_bytes") == 1e9
    assert value(metrics, "gpt2_batch_size_count") == (1 if record else 0)
    engine.step_listeners[0](StepStats("idle", 0.0, 0, 0, 0))  # the engine emptied without a step
    assert value(metrics, "gpt2_requests_running") == 0 and value(metrics, "gpt2_batch_size_count") == (
        1 if record else 0)
    assert value(metrics, "process_cpu_seconds_total") == 0  # the API process's collectors are off here
    assert value(metrics, "gpt2_engine_process_cpu_seconds_total") > 0  # pid 1: read from /proc
    engine.death_listeners[0]("it died")
    assert value(metrics, "gpt2_engine_up") == 0


# --- the middleware and the request log, on a small app without a model ----------------------

def small_app(**settings) -> FastAPI:
    app = FastAPI()
    app.state.gpt2 = AppState(Settings(**settings))
    install_error_handlers(app)

    @app.post("/v1/completions")
    async def complete(record: RecordDep):
        record.prompt_tokens = 3
        record.prompt = "Hello there"
        record.engine_stats = [RequestStats("a", 3, 4, 0.002, 0.05, 0.3, "length", 0),
                               RequestStats("b", 3, 2, 0.004, 0.04, 0.2, "stop", 0)]
        record.completion_tokens = 6
        record.finish_reasons = ["length", "stop"]
        return {"ok": True}

    @app.post("/stream")
    async def stream(record: RecordDep):
        async def chunks():
            for i in range(3):
                yield f"data: {i}\n\n"
            record.completion_tokens = 3

        record.prompt_tokens = 2
        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.post("/refuse")
    async def refuse():
        raise APIError(429, "full", code="queue_full")

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    app.add_middleware(RequestContextMiddleware, state=app.state.gpt2)
    install_metrics(app)
    return app


def access_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.access"]


def test_middleware_counts_statuses_streams_and_unknown_paths(caplog):
    app = small_app()
    metrics = app.state.metrics
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.DEBUG, "app.access"):
        assert client.post("/v1/completions").status_code == 200
        assert client.post("/stream").text.count("data:") == 3
        assert client.post("/refuse").status_code == 429
        assert client.get("/boom").status_code == 500
        assert client.get("/no/such/path/12345").status_code == 404
        assert client.get("/v1/completions").status_code == 405
        assert client.get("/metrics").status_code == 200
    got = samples(metrics)
    requests = {dict(k[1])["endpoint"] + " " + dict(k[1])["status"]: v for k, v in got.items()
                if k[0] == "gpt2_requests_total"}
    assert requests == {"/v1/completions 200": 1, "/stream 200": 1, "/refuse 429": 1, "/boom 500": 1,
                        "other 404": 1, "/v1/completions 405": 1, "/metrics 200": 1}
    assert value(metrics, "gpt2_generation_tokens_total") == 9  # the stream's tokens, set as it ended
    assert value(metrics, "gpt2_prompt_tokens_total") == 5
    assert value(metrics, "gpt2_requests_rejected_total", reason="queue_full") == 1
    endpoints = {dict(k[1])["endpoint"] for k in got if k[0] == "gpt2_request_duration_seconds_count"}
    assert endpoints == {"/v1/completions", "/stream", "/refuse", "/boom", "other", "/metrics"}
    records = access_records(caplog)
    assert len(records) == 7, "one line per request"
    assert records[-1].levelno == logging.DEBUG and records[-1].fields["endpoint"] == "/metrics"
    assert records[3].levelno == logging.WARNING and records[3].fields["status"] == 500
    assert records[4].fields["path"] == "/no/such/path/12345"


def test_the_request_log_line_has_the_request_and_no_prompt_by_default(caplog):
    with TestClient(small_app()) as client, caplog.at_level(logging.INFO, "app.access"):
        client.post("/v1/completions", headers={"X-Request-ID": "req-1"})
    (record,) = access_records(caplog)
    fields = record.fields
    assert fields["request_id"] == "req-1"
    assert (fields["endpoint"], fields["method"], fields["status"]) == ("/v1/completions", "POST", 200)
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == (3, 6)
    assert fields["queue_time_ms"] == pytest.approx(4.0) and fields["ttft_ms"] == pytest.approx(40.0)
    assert fields["finish_reason"] == "length,stop"
    assert fields["duration_ms"] > 0
    assert "prompt" not in fields
    line = json.loads(JSONFormatter().format(record))
    assert line["request_id"] == "req-1" and line["level"] == "info" and line["logger"] == "app.access"
    assert line["message"].startswith("POST /v1/completions 200 ")


def test_prompts_are_logged_only_when_asked(caplog):
    with TestClient(small_app(log_prompts=True)) as client, caplog.at_level(logging.INFO, "app.access"):
        client.post("/v1/completions")
    (record,) = access_records(caplog)
    assert record.fields["prompt"] == "Hello there"


def test_text_format_keeps_one_record_on_one_line():
    record = logging.LogRecord("app.access", logging.INFO, __file__, 1, "POST %s", ("/v1/completions",), None)
    record.fields = {"request_id": "r1", "status": 200, "prompt": 'two\nlines "quoted"', "ids": [1, 2]}
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith('POST /v1/completions request_id=r1 status=200 prompt="two\\nlines \\"quoted\\"" '
                         "ids=[1,2]")


def test_metrics_endpoint_speaks_text_and_openmetrics():
    with TestClient(small_app()) as client:
        text = client.get("/metrics")
        assert text.headers["content-type"].startswith("text/plain")
        assert "# TYPE gpt2_requests_total counter" in text.text
        om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")


def test_a_broken_log_line_never_fails_the_request(caplog):
    app = small_app()

    @app.get("/odd")
    async def odd(record: RecordDep):
        record.engine_stats = [object()]  # not RequestStats: building the log line fails
        return {"ok": True}

    with TestClient(app) as client, caplog.at_level(logging.INFO, "app.access"):
        assert client.get("/odd").status_code == 200
        assert client.get("/odd").status_code == 200
    assert value(app.state.metrics, "gpt2_requests_total", endpoint="/odd", status="200") == 2
    assert [r.levelno for r in access_records(caplog)] == [logging.ERROR], "logged once"
