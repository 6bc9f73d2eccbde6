"""The Grafana dashboard, the alert rules and the autoscaler use only metrics the service exports.

`exported_metric_names` below is the ONE list of exported series names these tests trust.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/gpt2-serve.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
ALERT_TESTS = ROOT / "deploy/prometheus/alerts_test.yml"

# Metric families the service exports, by Prometheus type (the contract in docs/deploy.md).
_HISTOGRAMS = [
    "gpt2_request_duration_seconds", "gpt2_request_queue_seconds",
    "gpt2_time_to_first_token_seconds", "gpt2_inter_token_latency_seconds",
    "gpt2_step_duration_seconds", "gpt2_batch_size", "gpt2_request_prompt_tokens",
    "gpt2_request_generation_tokens", "gpt2_key_class_queue_seconds",
]
_COUNTERS = [  # exposed with the _total suffix
    "gpt2_requests", "gpt2_prompt_tokens", "gpt2_generation_tokens", "gpt2_scored_tokens",
    "gpt2_requests_rejected", "gpt2_requests_aborted", "gpt2_key_class_requests", "gpt2_prefill_tokens",
    "gpt2_prefix_cache_queried_tokens", "gpt2_prefix_cache_hit_tokens", "gpt2_prefix_cache_evictions",
    # prometheus-client's default collectors
    "process_cpu_seconds", "python_gc_objects_collected", "python_gc_objects_uncollectable",
    "python_gc_collections",
]
_GAUGES = [
    "gpt2_requests_running", "gpt2_requests_waiting", "gpt2_kv_cache_usage_ratio",
    "gpt2_model_info", "gpt2_device_memory_used_bytes", "gpt2_device_memory_total_bytes", "gpt2_key_class_sequences",
    "process_virtual_memory_bytes", "process_resident_memory_bytes", "process_start_time_seconds",
    "process_open_fds", "process_max_fds", "python_info",
]

# A series name a query selects, e.g. gpt2_requests_total or gpt2_batch_size_bucket. Label values
# (quoted strings) are removed before matching, so job="gpt2-serve" is not mistaken for one.
_METRIC = re.compile(r"\b(?:gpt2|process|python)_[a-z0-9_]*[a-z0-9]\b")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_CUMULATIVE = ("_total", "_bucket", "_sum", "_count", "_created")


@pytest.fixture(scope="module")
def exported_metric_names() -> set[str]:
    """Every series name the service exposes on /metrics (sample names, suffixes included).

    The app's integration tests replace this with the live output of GET /metrics, e.g.
    {s.name for f in prometheus_client.parser.text_string_to_metric_families(body)
     for s in f.samples}; until then it is the documented contract above.
    """
    names = set(_GAUGES)
    for family in _COUNTERS:
        names |= {f"{family}_total", f"{family}_created"}
    for family in _HISTOGRAMS:
        names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count", f"{family}_created"}
    return names


def metric_names(promql: str) -> list[str]:
    return _METRIC.findall(_STRING.sub('""', promql))


def family(name: str) -> str:
    for suffix in _CUMULATIVE:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_cumulative(name: str, exported: set[str]) -> bool:
    """True for counter samples and histogram buckets/sums/counts: they need rate()/increase()."""
    return name.endswith(_CUMULATIVE) and name in exported and name not in _GAUGES


# --- the dashboard -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels(dashboard: dict) -> list[dict]:
    # Rows only group panels; every other panel must query something.
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
           for p in query_panels(dashboard) for t in p["targets"]]
    out += [(f"variable {v['name']}", v["definition"])
            for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return out


def test_dashboard_identity(dashboard):
    assert dashboard["uid"] == "gpt2-serve"
    assert dashboard["title"] == "gpt2-serve"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None  # provisioned dashboards must not carry a database id


def test_dashboard_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["definition"] == "label_values(gpt2_model_info, model)"
    assert variables["model"]["query"]["query"] == variables["model"]["definition"]
    instance = variables["instance"]["definition"]
    assert instance.startswith("label_values(gpt2_model_info") and instance.endswith(", instance)")
    assert '$model' in instance, "choosing a model must narrow the instances"
    for name in ("model", "instance"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"


def test_every_panel_has_targets(dashboard):
    panels = query_panels(dashboard)
    assert len(panels) >= 15
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no targets"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), f"duplicate refId in {panel['title']!r}"
        for t in panel["targets"]:
            assert t["expr"].strip(), f"empty expr in {panel['title']!r}"
            assert t["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in t["expr"], \
                f"{panel['title']!r} {t['refId']} ignores the instance variable"


def test_dashboard_layout(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    taken: dict[tuple[int, int], str] = {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = p["title"]


def test_dashboard_has_the_required_panels(dashboard):
    titles = {p["title"] for p in query_panels(dashboard)}
    for title in ("Requests by status", "End-to-end latency", "Time to first token",
                  "Inter-token latency", "Queue time", "Tokens per second", "Running and waiting",
                  "Batch size", "Step duration by phase", "KV-cache usage", "Rejections by reason",
                  "Aborted requests", "Device memory"):
        assert title in titles


def test_dashboard_uses_only_exported_metrics(dashboard, exported_metric_names):
    unknown = [(where, name) for where, expr in dashboard_exprs(dashboard)
               for name in metric_names(expr) if name not in exported_metric_names]
    assert not unknown, f"queries use series the service does not export: {unknown}"


def test_dashboard_covers_every_gpt2_metric(dashboard, exported_metric_names):
    used = {family(n) for _, expr in dashboard_exprs(dashboard) for n in metric_names(expr)}
    families = {family(n) for n in exported_metric_names if n.startswith("gpt2_")}
    assert families - used == set(), "metrics without a panel"


def test_counters_are_rated_and_gauges_are_not(dashboard, exported_metric_names):
    problems = []
    for where, expr in dashboard_exprs(dashboard):
        if where.startswith("variable"):
            continue
        text = _STRING.sub('""', expr)
        for match in _METRIC.finditer(text):
            rated = re.search(r"\b(?:rate|irate|increase)\(\s*$", text[: match.start()]) is not None
            if is_cumulative(match.group(), exported_metric_names) != rated:
                problems.append((where, match.group(), "rated" if rated else "not rated"))
    assert not problems


def test_quantiles_aggregate_buckets_by_le(dashboard):
    for where, expr in dashboard_exprs(dashboard):
        if "histogram_quantile" not in expr:
            continue
        assert "_bucket{" in expr, where
        by = re.search(r"sum by \(([^)]*)\)", expr)
        assert by and "le" in [label.strip() for label in by.group(1).split(",")], where


def test_dashboard_json_is_generated_from_the_script(dashboard):
    spec = importlib.util.spec_from_file_location(
        "make_dashboard", ROOT / "deploy/grafana/make_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), \
        "dashboard JSON is stale: run python deploy/grafana/make_dashboard.py"


def test_dashboard_queries_are_valid_promql(dashboard, require_tool, tmp_path):
    """promtool parses every panel query (Grafana's variables replaced by plain values)."""
    promtool = require_tool("promtool")
    rules = []
    for panel in query_panels(dashboard):
        for t in panel["targets"]:
            expr = (t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
                    .replace("$model", ".*").replace("$endpoint", ".*"))
            assert "$" not in expr, f"unknown variable in {expr}"
            rules.append({"record": f"dashboard:panel{panel['id']}:{t['refId']}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the alert rules -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_alerts_use_only_exported_metrics(alert_rules, exported_metric_names):
    unknown = [(r["alert"], n) for r in alert_rules for n in metric_names(r["expr"])
               if n not in exported_metric_names]
    assert not unknown


def test_alerts_cover_the_required_conditions(alert_rules):
    exprs = {r["alert"]: r["expr"] for r in alert_rules}
    joined = "\n".join(exprs.values())
    assert any("up{" in e for e in exprs.values()), "no service-down alert"
    assert "gpt2_request_duration_seconds_bucket" in joined, "no latency alert"
    assert "gpt2_time_to_first_token_seconds_bucket" in joined, "no TTFT alert"
    assert "gpt2_requests_waiting" in joined, "no queue alert"
    assert 'status=~"5.."' in joined and 'status!~"2.."' in joined, "no error-ratio alerts"
    assert "gpt2_requests_rejected_total" in joined, "no rejection alert"


def test_alerts_are_labelled_and_annotated(alert_rules):
    for rule in alert_rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert 'job="gpt2-serve"' in rule["expr"], f"{rule['alert']} must select the job"


def test_every_alert_is_unit_tested_firing_and_silent(alert_rules):
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires, silent = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules}
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested staying silent"


# --- the autoscaler ------------------------------------------------------------------------------

def test_hpa_metric_is_exported_and_served_by_the_adapter(exported_metric_names):
    hpa = yaml.safe_load((ROOT / "deploy/k8s/base/hpa.yaml").read_text())
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "gpt2_requests_waiting" and name in exported_metric_names
    assert metric["pods"]["target"]["type"] == "AverageValue"

    values = yaml.safe_load((ROOT / "deploy/k8s/prometheus-adapter/values.yaml").read_text())
    rules = values["rules"]["custom"]
    served = [r for r in rules if r["name"]["as"] == name]
    assert len(served) == 1, f"prometheus-adapter exposes no {name}"
    rule = served[0]
    assert metric_names(rule["seriesQuery"]) == [name]
    assert re.fullmatch(rule["name"]["matches"], name)
    overrides = rule["resources"]["overrides"]
    assert overrides["pod"]["resource"] == "pod"  # a *pods* metric for the HPA
    assert overrides["namespace"]["resource"] == "namespace"
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
