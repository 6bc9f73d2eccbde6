"""A real Prometheus scrapes a loaded service; every dashboard query and every alert rule has data.

Prometheus (Debian's `prometheus` package) runs on 127.0.0.1 with the repo's own
deploy/prometheus/prometheus.yml, rewritten only where a test must: the gpt2-serve job's target
(the test server), 1 s scrape and evaluation intervals, absolute rule-file paths, and the
self-scrape job's port. A bounded load runs (completions, streamed and not, scoring if the route
exists, errors, 429s, 503s, an abort); then each PromQL expression of every Grafana panel and
variable and of every alert rule is evaluated through the HTTP API (/api/v1/query) and must
return data: a non-empty result with at least one value that is not NaN.

Grafana's variables are replaced as Grafana would for this one replica: $model and $instance
by the test server's model name and scrape address, $endpoint by ".*" (All), $__rate_interval,
$__interval and $__range by 1m (the whole test fits in it). `label_values(selector, label)`
variables are evaluated as `group by (label) (selector)`.

Alert expressions are comparisons that are normally false (empty), so what is checked for data
is the quantity each alert watches: the left-hand side of a trailing comparison with a number
(`A / B > 0.05` -> `A / B`), and the argument of absent() (absent(up{...}) is empty while the
target is up; `up{...}` must have data). The whole expression is evaluated too and must be
valid. Every rule must load and evaluate without error in Prometheus.

Without prometheus or promtool installed the tests skip, except under CI=true, where they fail.
"""

import math
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from app.api.lifecycle import Phase
from app.engine.faults import Fault, inject
from tests.integration.conftest import free_port, start_server
from tests.integration.test_metrics import alert_exprs, dashboard_exprs

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy/prometheus"
JOB = "gpt2-serve"
MODEL = "tiny-gpt2"


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{ROOT / '.venv/bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    message = f"{name} is not installed (apt-get install -y --no-install-recommends prometheus)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)



def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120)


# --- promtool --------------------------------------------------------------------------------

def test_promtool_finds_nothing_in_a_real_scrape(live):
    promtool = tool("promtool")
    live.client().completions.create(model="tiny-gpt2", prompt="Hello", max_tokens=3)
    live.http().post("/v1/completions", json={"prompt": "x", "temperature": -1})
    text = live.http().get("/metrics").text
    result = run(promtool, "check", "metrics", stdin=text)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_promtool_checks_the_config_and_rules():
    promtool = tool("promtool")
    config = run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run(promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


# --- a real Prometheus -----------------------------------------------------------------------

def prometheus_config(target: str, prometheus_port: int) -> dict:
    """The repo's prometheus.yml, pointed at the test server and sped up."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config.setdefault("global", {}).update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config.get("rule_files", [])]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert JOB in jobs, f"prometheus.yml has no {JOB} job"
    for name, job in jobs.items():
        job.update(scrape_interval="1s", scrape_timeout="1s")
        if name == JOB:
            job["static_configs"] = [{"targets": [target]}]
        elif name == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    return config


class Prometheus:
    def __init__(self, binary: str, config: Path, data: Path, port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=log.open("w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus did not become ready: {self.log.read_text()[-3000:]}")

    def api(self, path: str, **params) -> dict:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr, time=f"{time.time():.3f}")
        assert data["resultType"] in ("vector", "scalar"), (expr, data)
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture(scope="module")
def scraped(tiny_model_dir, tmp_path_factory):
    """(server, prometheus) after a bounded load, every change scraped."""
    binary, promtool = tool("prometheus"), tool("promtool")
    server = start_server(model=tiny_model_dir, served_model_name=MODEL, max_batch_size=4, max_queue=4,
                          max_num_batched_tokens=64)
    prometheus = None
    try:
        tmp = tmp_path_factory.mktemp("prometheus")
        port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(server.url.removeprefix("http://"), port)))
        checked = run(promtool, "check", "config", str(config))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        prometheus = Prometheus(binary, config, tmp / "data", port, tmp / "prometheus.log")
        prometheus.wait_ready()
        wait_until(lambda: target_health(prometheus) == "up", "the target to be scraped")
        load(server)
        wait_until(lambda: in_sync(server, prometheus), "prometheus to scrape the last requests")
        yield server, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def target_health(prometheus: Prometheus) -> str | None:
    targets = prometheus.api("targets")["activeTargets"]
    return next((t["health"] for t in targets if t["labels"].get("job") == JOB), None)


def in_sync(server, prometheus: Prometheus) -> bool:
    """Prometheus's last scrape has every completions request the server has counted."""
    text = server.http().get("/metrics").text
    served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith('gpt2_requests_total{endpoint="/v1/completions"'))
    result = prometheus.query(f'sum(gpt2_requests_total{{job="{JOB}", endpoint="/v1/completions"}})')
    return bool(result) and float(result[0]["value"][1]) == served


def load(server) -> dict[int, int]:
    """A bounded mixed load (~10 s); returns how many responses got each status."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    engine = server.engine

    def slow(delay: float) -> None:  # the tiny model is ~100x quicker than a real one: give gauges and queues a life
        inject(engine, Fault(step_delay=delay))

    def note(response: httpx.Response) -> None:
        with lock:
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    has_score = "/v1/score" in server.app.openapi()["paths"]

    def worker(seed: int, until: float) -> None:
        with server.http() as http:
            i = seed
            while time.monotonic() < until:
                i += 1
                if i % 4 == 0:
                    with http.stream("POST", "/v1/completions", json={
                            "prompt": f"Stream {i}", "max_tokens": 12, "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
                        for _ in r.iter_lines():
                            pass
                    note(r)
                elif i % 4 == 1 and has_score:
                    note(http.post("/v1/score", json={"input": f"The number {i} is scored."}))
                elif i % 4 == 2:
                    note(http.post("/tokenize", json={"prompt": f"tokens {i}"}))
                else:
                    note(http.post("/v1/completions", json={"prompt": f"Prompt {i}", "max_tokens": 4 + i % 8,
                                                            "temperature": 0.7, "seed": i}))

    def burst_one() -> None:
        note(server.http().post("/v1/completions", json={"prompt": "burst", "max_tokens": 48, "ignore_eos": True}))

    slow(0.005)
    try:
        until = time.monotonic() + 5
        threads = [threading.Thread(target=worker, args=(k * 1000, until)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        slow(0.02)
        burst = [threading.Thread(target=burst_one) for _ in range(12)]  # 4 slots + 4 queued: the rest get 429
        for t in burst:
            t.start()
        for t in burst:
            t.join(120)
        with server.http() as http, http.stream("POST", "/v1/completions", json={
                "prompt": "a", "max_tokens": 200, "ignore_eos": True, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)  # then the client goes away
        slow(0.005)
        errors(server, note)
    finally:
        slow(0.0)
    assert statuses.get(429, 0) >= 1, statuses
    return statuses


def errors(server, note) -> None:
    http, state = server.http(), server.state
    note(http.post("/v1/completions", json={"prompt": "x", "temperature": -1}))
    note(http.post("/v1/completions", json={"prompt": "x", "model": "nope"}))
    note(http.post("/v1/completions", json={"prompt": "x", "max_tokens": 100000}))
    note(http.get("/no/such/path"))
    state.settings.api_keys = ["secret"]
    try:
        note(http.post("/v1/completions", json={"prompt": "x"}))
    finally:
        state.settings.api_keys = []
    state.lifecycle.phase = Phase.DRAINING  # as after SIGTERM: a 5xx for the error-ratio queries
    try:
        note(http.post("/v1/completions", json={"prompt": "x"}))
    finally:
        state.lifecycle.phase = Phase.READY
    note(http.post("/v1/completions", json={"prompt": "after the errors", "max_tokens": 3}))


def has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def grafana(expr: str, server) -> str:
    values = {"__rate_interval": "1m", "__interval": "1m", "__range": "1m", "model": MODEL,
              "instance": server.url.removeprefix("http://"), "endpoint": ".*"}
    expr = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], expr)
    label_values = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", expr, re.S)
    if label_values:
        return f"group by ({label_values.group(2)}) ({label_values.group(1)})"
    return expr


COMPARISON = re.compile(r"(?P<lhs>.*?)\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?(?P<rhs>[-+*/().\d\se]+)", re.S)


def watched_quantity(expr: str) -> str:
    expr = expr.strip()
    absent = re.fullmatch(r"absent\((?P<inner>.*)\)", expr, re.S)
    if absent:
        return absent.group("inner")
    comparison = COMPARISON.fullmatch(expr)
    return comparison.group("lhs") if comparison else expr


def test_watched_quantity_strips_thresholds_and_absent():
    assert watched_quantity('up{job="x"} == 0') == 'up{job="x"}'
    assert watched_quantity('absent(up{job="x"})') == 'up{job="x"}'
    assert watched_quantity('a{s!~"2.."} / b\n  > 0.05\n') == 'a{s!~"2.."} / b'
    assert watched_quantity("w > 0.8 * 256") == "w"
    assert watched_quantity("rate(x[5m])") == "rate(x[5m])"


def test_every_dashboard_query_has_data(scraped):
    server, prometheus = scraped
    empty = []
    for where, expr in dashboard_exprs():
        query = grafana(expr, server)
        assert "$" not in query, f"{where}: unknown Grafana variable in {query}"
        if not has_data(prometheus.query(query)):
            empty.append((where, query))
    assert empty == [], "panels that would show 'No data' against a loaded service"


def test_dashboard_variables_offer_this_replica(scraped):
    server, prometheus = scraped
    choices = {}
    for where, expr in dashboard_exprs():
        if where.startswith("variable"):
            label = re.search(r",\s*(\w+)\s*\)\s*$", expr).group(1)
            choices[label] = {s["metric"].get(label) for s in prometheus.query(grafana(expr, server))}
    assert set(choices) == {"model", "instance", "endpoint"}  # (a renamed variable or series fails here)
    assert MODEL in choices["model"]
    assert server.url.removeprefix("http://") in choices["instance"]
    assert "/v1/completions" in choices["endpoint"]


def test_every_alert_watches_data_and_evaluates_cleanly(scraped):
    _, prometheus = scraped
    empty = []
    for where, expr in alert_exprs():
        prometheus.query(expr)  # valid PromQL (usually empty: nothing is wrong)
        if not has_data(prometheus.query(watched_quantity(expr))):
            empty.append((where, watched_quantity(expr)))
    assert empty == [], "alert rules whose watched quantity has no data"
    wait_until(lambda: all(not r.get("lastEvaluation", "0001").startswith("0001")  # Go's zero time: never
                           for g in prometheus.api("rules")["groups"] for r in g["rules"]), "rule evaluation")
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(alert_exprs()), "every rule of alerts.yml is loaded"
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def test_prometheus_saw_what_the_service_counted(scraped):
    server, prometheus = scraped
    text = server.http().get("/metrics").text

    def served(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))

    for name in ("gpt2_time_to_first_token_seconds_count", "gpt2_generation_tokens_total",
                 "gpt2_requests_aborted_total"):
        (sample,) = prometheus.query(f'{name}{{job="{JOB}"}}')
        assert float(sample["value"][1]) == served(name), name
    (aborted,) = prometheus.query(f'gpt2_requests_aborted_total{{job="{JOB}"}}')
    assert float(aborted["value"][1]) >= 1
    queue_full = prometheus.query(f'gpt2_requests_rejected_total{{job="{JOB}", reason="queue_full"}}')
    assert float(queue_full[0]["value"][1]) >= 1
    # series that start at 0 let rate() see their first increments: the error share is not 0
    for status in ("4..", "5..", "499"):
        (share,) = prometheus.query(f'sum(rate(gpt2_requests_total{{job="{JOB}", status=~"{status}"}}[1m]))')
        assert float(share["value"][1]) > 0, status
