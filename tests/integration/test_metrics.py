"""GET /metrics and the request log on a real server: the series agree with what happened.

Which level each series counts at (see app/metrics.py): per HTTP request for
gpt2_request_duration_seconds{endpoint}, gpt2_requests_total, rejections, aborts and the token
counters (the `usage` of 2xx responses); per engine sequence for TTFT, queue time and the
per-request token histograms (a completion with n=1 and one prompt is one sequence).
"""

import json
import logging
import re
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.api.auth import Callers
from app.api.lifecycle import Phase
from app.config import Settings
from app.engine.faults import Fault, inject
from tests.integration.conftest import start_server, wait_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/gpt2-serve.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"

# the metric contract (the team's DESIGN.md, outside this repository, "Metrics"): family -> Prometheus type
CONTRACT = {
    "gpt2_request_duration_seconds": "histogram", "gpt2_request_queue_seconds": "histogram",
    "gpt2_time_to_first_token_seconds": "histogram", "gpt2_inter_token_latency_seconds": "histogram",
    "gpt2_step_duration_seconds": "histogram", "gpt2_batch_size": "histogram",
    "gpt2_request_prompt_tokens": "histogram", "gpt2_request_generation_tokens": "histogram",
    "gpt2_requests": "counter", "gpt2_prompt_tokens": "counter", "gpt2_generation_tokens": "counter",
    "gpt2_scored_tokens": "counter", "gpt2_requests_rejected": "counter", "gpt2_requests_aborted": "counter",
    "gpt2_requests_running": "gauge", "gpt2_requests_waiting": "gauge", "gpt2_kv_cache_usage_ratio": "gauge",
    "gpt2_model_info": "gauge", "gpt2_device_memory_used_bytes": "gauge", "gpt2_device_memory_total_bytes": "gauge",
    "process_cpu_seconds": "counter", "process_resident_memory_bytes": "gauge", "python_info": "gauge",
    "python_gc_collections": "counter", "gpt2_prefill_tokens": "counter", "gpt2_prefix_cache_queried_tokens": "counter",
    "gpt2_prefix_cache_hit_tokens": "counter", "gpt2_prefix_cache_evictions": "counter",
}
# key_class: the classes GPT2_API_KEYS names, "default" and "anonymous" (never a key, never an address)
BOUNDED_LABELS = {"endpoint", "status", "reason", "phase", "le", "model", "device", "dtype", "load_format",
                  "cuda_graphs", "generation", "implementation", "major", "minor", "patchlevel", "version",
                  "key_class"}


class Scrape:
    """One GET /metrics, parsed."""

    def __init__(self, text: str):
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.values = {(s.name, frozenset(s.labels.items())): s.value for f in self.families for s in f.samples}

    def __call__(self, name: str, **labels) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels) -> float:
        """Sum over every series of `name` whose labels include `labels`."""
        return sum(v for (n, ls), v in self.values.items() if n == name and set(labels.items()) <= ls)

    @property
    def sample_names(self) -> set[str]:
        return {name for name, _ in self.values}


def scrape(server) -> Scrape:
    return Scrape(httpx.get(f"{server.url}/metrics", timeout=30).text)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    server = start_server(model=tiny_model_dir, served_model_name="tiny-gpt2")
    yield server
    server.stop()


# --- the exposition ----------------------------------------------------------------------------

def test_every_documented_series_is_exported_with_its_type(server):
    got = {f.name: f.type for f in scrape(server).families}
    for family, kind in CONTRACT.items():
        assert got.get(family) == kind, family


def test_model_info_and_gauges(server):
    s = scrape(server)
    info = server.state.service.info
    assert s("gpt2_model_info", model="tiny-gpt2", device=info.device, dtype=info.dtype,
             load_format=info.load_format, cuda_graphs="off") == 1  # a CPU: no CUDA graphs
    assert s("gpt2_requests_running") == 0 and s("gpt2_requests_waiting") == 0 and s("gpt2_kv_cache_usage_ratio") == 0
    assert 0 < s("gpt2_device_memory_used_bytes") < s("gpt2_device_memory_total_bytes")  # CPU: RSS < RAM


def test_labels_stay_bounded(server):
    http = server.http()
    http.get("/some/user/path/with-an-id-8f3a")
    http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers={"X-Request-ID": "unique-1"})
    s = scrape(server)
    for (name, labels), _ in s.values.items():
        assert {k for k, _ in labels} <= BOUNDED_LABELS, name
        assert dict(labels).get("key_class", "anonymous") in ("anonymous", "default"), labels  # this server's
        assert "unique-1" not in dict(labels).values()
        assert "with-an-id" not in str(dict(labels).get("endpoint", ""))
    assert s("gpt2_requests_total", endpoint="other", status="404") >= 1


# --- the counts agree with what happened -------------------------------------------------------

def test_histograms_and_counters_match_n_completed_requests(server):
    before = scrape(server)
    client = server.client()
    usages = []
    for i in range(3):
        usages.append(client.completions.create(model="tiny-gpt2", prompt=f"Hello number {i}", max_tokens=4 + i,
                                                 temperature=0).usage)
    for i in range(3):
        stream = client.completions.create(model="tiny-gpt2", prompt=["The", "A longer prompt"][i % 2],
                                           max_tokens=6, stream=True, stream_options={"include_usage": True})
        usages.append([chunk.usage for chunk in stream if chunk.usage is not None][0])
    n = len(usages)
    after = scrape(server)

    def delta(name, **labels):
        return after(name, **labels) - before(name, **labels)

    assert delta("gpt2_time_to_first_token_seconds_count") == n
    assert delta("gpt2_request_duration_seconds_count", endpoint="/v1/completions") == n
    assert delta("gpt2_requests_total", endpoint="/v1/completions", status="200") == n
    assert delta("gpt2_request_queue_seconds_count") == n
    assert delta("gpt2_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("gpt2_generation_tokens_total") == sum(u.completion_tokens for u in usages)
    assert delta("gpt2_request_prompt_tokens_sum") == sum(u.prompt_tokens for u in usages)
    assert delta("gpt2_request_generation_tokens_sum") == sum(u.completion_tokens for u in usages)
    assert delta("gpt2_inter_token_latency_seconds_count") == sum(u.completion_tokens - 1 for u in usages)
    steps = sum(delta("gpt2_step_duration_seconds_count", phase=p) for p in ("prefill", "decode", "mixed"))
    assert steps == delta("gpt2_batch_size_count") > 0
    # every observation lies in a bucket: +Inf counts them all
    assert delta("gpt2_time_to_first_token_seconds_bucket", le="+Inf") == n


def test_counters_follow_usage_and_histograms_follow_sequences_for_n_choices(server):
    before = scrape(server)
    out = server.client().completions.create(model="tiny-gpt2", prompt=["one two", "three"], n=2, max_tokens=3)
    after = scrape(server)
    assert len(out.choices) == 4
    assert after("gpt2_prompt_tokens_total") - before("gpt2_prompt_tokens_total") == out.usage.prompt_tokens
    assert (after("gpt2_generation_tokens_total") - before("gpt2_generation_tokens_total")
            == out.usage.completion_tokens)
    assert after("gpt2_time_to_first_token_seconds_count") - before("gpt2_time_to_first_token_seconds_count") == 4
    assert (after("gpt2_request_duration_seconds_count", endpoint="/v1/completions")
            - before("gpt2_request_duration_seconds_count", endpoint="/v1/completions")) == 1


def test_a_repeated_prompt_is_computed_once_and_usage_metrics_and_log_say_so(server, caplog):
    """Prefix reuse through HTTP: n choices prefill their prompt once; a repeat reuses it; the echoed
    scores are the same numbers; usage (OpenAI's prompt_tokens_details.cached_tokens), the counters
    and the request log agree."""
    client = server.client()
    prompt = list(range(1000, 1100))  # 100 token ids
    before = scrape(server)
    forked = client.completions.create(model="tiny-gpt2", prompt=prompt, n=4, max_tokens=2, seed=1, echo=True,
                                       logprobs=1)
    middle = scrape(server)
    with caplog.at_level(logging.INFO, logger="app.access"):
        again = server.http().post("/v1/completions", json={"model": "tiny-gpt2", "prompt": prompt, "max_tokens": 2,
                                                            "echo": True, "logprobs": 1},
                                   headers={"X-Request-ID": "reuse-1"})
        wait_for(lambda: any(getattr(r, "fields", {}).get("request_id") == "reuse-1" for r in caplog.records))
    after = scrape(server)

    def delta(a, b, name):
        return b(name) - a(name)

    # four choices, one prefill of the prompt (+ the last token of each of the three forks)
    assert delta(before, middle, "gpt2_prefill_tokens_total") == 100 + 3
    assert delta(before, middle, "gpt2_prefix_cache_queried_tokens_total") == 4 * 100
    assert delta(before, middle, "gpt2_prefix_cache_hit_tokens_total") == 3 * 99
    assert forked.usage.prompt_tokens == 100 and forked.usage.prompt_tokens_details.cached_tokens == 0
    # the repeat: everything but the last prompt token comes from the cache, scores included
    usage = again.json()["usage"]
    assert usage["prompt_tokens"] == 100 and usage["prompt_tokens_details"] == {"cached_tokens": 99}
    assert delta(middle, after, "gpt2_prefill_tokens_total") == 1
    assert delta(middle, after, "gpt2_prefix_cache_hit_tokens_total") == 99
    cold = forked.choices[0].logprobs.token_logprobs[:100]
    warm = again.json()["choices"][0]["logprobs"]["token_logprobs"][:100]
    assert cold[0] is None and warm[0] is None and warm[1:] == pytest.approx(cold[1:], abs=1e-4)
    (line,) = [r for r in caplog.records if r.name == "app.access" and r.fields.get("request_id") == "reuse-1"]
    assert line.fields["reused_tokens"] == 99


def test_scored_tokens_follow_score_usage(server):
    before = scrape(server)
    response = server.http().post("/v1/score", json={"input": ["The cat sat on the mat.", "Hello world"]})
    if response.status_code == 404 and "/v1/score" not in server.app.openapi()["paths"]:
        pytest.skip("no /v1/score route in this build")
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    after = scrape(server)
    assert after("gpt2_scored_tokens_total") - before("gpt2_scored_tokens_total") == usage["scored_tokens"]
    assert after("gpt2_prompt_tokens_total") - before("gpt2_prompt_tokens_total") == usage["prompt_tokens"]
    assert after("gpt2_requests_total", endpoint="/v1/score", status="200") - before(
        "gpt2_requests_total", endpoint="/v1/score", status="200") == 1
    assert after("gpt2_time_to_first_token_seconds_count") == before("gpt2_time_to_first_token_seconds_count")


def test_rejections_by_reason(server):
    http, state = server.http(), server.state
    before = scrape(server)
    assert http.post("/v1/completions", json={"prompt": "x", "temperature": -1}).status_code == 400
    assert http.post("/v1/completions", json={"prompt": "x", "model": "nope"}).status_code == 404
    assert http.post("/v1/completions", json={"prompt": "x", "max_tokens": 100000}).status_code == 400
    chunked = http.post("/v1/completions", content=iter([b"x" * (state.settings.max_request_bytes + 1)]))
    assert chunked.status_code == 413
    callers, state.callers = state.callers, Callers(Settings(api_keys="secret"))
    try:
        assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 401
    finally:
        state.callers = callers
    engine = server.engine
    engine.admission.capacity, capacity = 0, engine.admission.capacity  # every request finds the engine full
    try:
        assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 429
    finally:
        engine.admission.capacity = capacity
    for phase in (Phase.DRAINING, Phase.LOADING):
        state.lifecycle.phase = phase
        try:
            assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 503
        finally:
            state.lifecycle.phase = Phase.READY
    assert http.get("/v1/completions").status_code == 405  # refused by routing, not a rejection
    assert http.get("/nope").status_code == 404
    after = scrape(server)
    rejected = {r: after("gpt2_requests_rejected_total", reason=r) - before("gpt2_requests_rejected_total", reason=r)
                for r in ("queue_full", "draining", "not_ready", "too_long", "invalid", "unauthorized")}
    assert rejected == {"queue_full": 1, "draining": 1, "not_ready": 1, "too_long": 2, "invalid": 2,
                        "unauthorized": 1}
    statuses = {s: after.total("gpt2_requests_total", endpoint="/v1/completions", status=s)
                - before.total("gpt2_requests_total", endpoint="/v1/completions", status=s)
                for s in ("400", "401", "404", "405", "413", "429", "503")}
    assert statuses == {"400": 2, "401": 1, "404": 1, "405": 1, "413": 1, "429": 1, "503": 2}


def test_body_too_large_by_content_length(server):
    """RequestContextMiddleware answers these before the app; they are seen (and counted as
    too_long) only when the observability middleware is the outer one."""
    from app.api.context import RequestContextMiddleware
    from app.api.observability import ObservabilityMiddleware

    order = [m.cls for m in server.app.user_middleware]
    before = scrape(server)
    body = b"x" * (server.state.settings.max_request_bytes + 1)
    response = server.http().post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    after = scrape(server)
    counted = after("gpt2_requests_rejected_total", reason="too_long") - before("gpt2_requests_rejected_total",
                                                                                 reason="too_long")
    outer = order.index(ObservabilityMiddleware) < order.index(RequestContextMiddleware)
    assert counted == (1 if outer else 0)


def test_a_client_that_goes_away_is_an_abort(server):
    before = scrape(server)
    long = {"prompt": "a", "max_tokens": 480, "ignore_eos": True, "stream": True}
    inject(server.engine, Fault(step_delay=0.01))  # the tiny model is too quick to catch mid-stream
    try:
        with server.http() as http, http.stream("POST", "/v1/completions", json=long) as response:
            lines = response.iter_lines()  # keep it: a dropped iterator closes the response
            next(lines)
            assert scrape(server)("gpt2_requests_running") == 1
            assert scrape(server)("gpt2_kv_cache_usage_ratio") > 0
        with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
            httpx.post(f"{server.url}/v1/completions", json={**long, "stream": False}, timeout=0.5)
        wait_for(lambda: scrape(server)("gpt2_requests_aborted_total") - before("gpt2_requests_aborted_total") >= 2)
    finally:
        inject(server.engine, Fault())
    after = scrape(server)
    assert after("gpt2_requests_aborted_total") - before("gpt2_requests_aborted_total") == 2
    assert after("gpt2_requests_total", endpoint="/v1/completions", status="499") - before(
        "gpt2_requests_total", endpoint="/v1/completions", status="499") == 2
    assert after("gpt2_requests_total", endpoint="/v1/completions", status="200") == before(
        "gpt2_requests_total", endpoint="/v1/completions", status="200")
    wait_for(lambda: scrape(server)("gpt2_requests_running") == 0)


# --- the request log ---------------------------------------------------------------------------

def test_one_log_line_per_request_with_its_numbers(server, caplog):
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = server.http().post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3},
                                      headers={"X-Request-ID": "log-line-1"})
        wait_for(lambda: any(getattr(r, "fields", {}).get("request_id") == "log-line-1" for r in caplog.records))
    lines = [r for r in caplog.records if r.name == "app.access" and r.fields.get("request_id") == "log-line-1"]
    assert len(lines) == 1
    fields = lines[0].fields
    usage = response.json()["usage"]
    assert fields["endpoint"] == "/v1/completions" and fields["status"] == 200 and fields["method"] == "POST"
    assert fields["prompt_tokens"] == usage["prompt_tokens"] and fields["completion_tokens"] == usage[
        "completion_tokens"]
    assert fields["finish_reason"] in ("stop", "length")
    assert 0 <= fields["queue_time_ms"] <= fields["ttft_ms"] <= fields["duration_ms"]
    assert "prompt" not in fields  # GPT2_LOG_PROMPTS is off
    json.dumps(fields)  # every field is JSON


def test_metrics_off_records_no_engine_stats(tiny_model_dir):
    server = start_server(model=tiny_model_dir, metrics=False)
    try:
        engine, metrics = server.engine, server.app.state.metrics
        assert engine.step_listeners == [metrics.on_state] and engine.request_listeners == []
        server.http().post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3})
        s = scrape(server)
        assert s("gpt2_time_to_first_token_seconds_count") == 0 and s("gpt2_batch_size_count") == 0
        assert s("gpt2_requests_total", endpoint="/v1/completions", status="200") == 1  # the edge still counts
        assert s.total("gpt2_model_info") == 1
    finally:
        server.stop()


# --- the dashboard and the alerts use only what the service exports ----------------------------

_METRIC = re.compile(r"\b(?:gpt2|process|python)_[a-z0-9_]*[a-z0-9]\b")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')


def metric_names(promql: str) -> set[str]:
    return set(_METRIC.findall(_STRING.sub('""', promql)))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expression) of every panel target and query variable of the Grafana dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    panels += [q for p in dashboard["panels"] for q in p.get("panels", [])]  # panels inside collapsed rows
    out = [(f"panel {p['title']!r} {t.get('refId', '')}", t["expr"]) for p in panels for t in p.get("targets", [])
           if t.get("expr")]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("definition") or var.get("query")
            out.append((f"variable {var['name']}", query["query"] if isinstance(query, dict) else query))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for g in groups for r in g["rules"]]


def test_dashboard_and_alerts_use_only_exported_metrics(server):
    server.client().completions.create(model="tiny-gpt2", prompt="x", max_tokens=2)
    exported = scrape(server).sample_names
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) > 20
    unknown = [(where, name) for where, expr in exprs for name in sorted(metric_names(expr)) if name not in exported]
    assert unknown == [], f"the dashboard or alerts use series /metrics does not export: {unknown}"
