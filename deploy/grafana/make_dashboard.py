#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/gpt2-serve.json, the dashboard Grafana provisions.

The JSON file is what Grafana loads and what is committed; this script is only the readable
source of it (panels as data, not 1,500 lines of hand-edited JSON). After changing a panel:

    python deploy/grafana/make_dashboard.py          # rewrite the JSON
    python deploy/grafana/make_dashboard.py --check  # exit 1 if the JSON is stale (tests do this)

Conventions: every query filters on the `instance` variable (itself narrowed by `model`, through
gpt2_model_info); counters go through rate(...[$__rate_interval]); quantiles are
histogram_quantile over `sum by (le)` of the bucket rates, so they aggregate across replicas.
Only metric names the service exports may appear (tests/deploy/test_dashboard.py checks).
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "gpt2-serve.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
INST = 'instance=~"$instance"'
# Endpoints that are plumbing, not API traffic (probes, scrapes).
API = f'{INST}, endpoint!~"/healthz|/readyz|/metrics"'
RATE = "$__rate_interval"


def quantiles(metric: str, matchers: str, by: str = "", qs=(0.5, 0.95, 0.99)) -> list[dict]:
    """p50/p95/p99 targets of a histogram, aggregated over the selected instances."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{matchers}}}[{RATE}])))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in qs
    ]


def target(expr: str, legend: str = "__auto", **extra) -> dict:
    return {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend,
            "range": True, **extra}


def timeseries(title: str, targets: list[dict], unit: str, description: str = "",
               w: int = 12, h: int = 8, **defaults) -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                           "showPoints": "never", "spanNulls": False},
                **defaults,
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_size": (w, h),
    }


def stat(title: str, expr: str, unit: str, description: str = "", w: int = 6, h: int = 4,
         thresholds: list[tuple[float | None, str]] | None = None) -> dict:
    steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "green")])]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, "", instant=True, range=False)],
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto"},
        "_size": (w, h),
    }


def row(title: str) -> dict:
    # Rows carry no queries; they only group the panels below them.
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def panels() -> list[dict]:
    return [
        row("Overview"),
        stat("Replicas", f'count(gpt2_model_info{{model=~"$model", {INST}}})', "none",
             "Instances exporting gpt2_model_info for the selected model(s).",
             thresholds=[(None, "red"), (1, "green")]),
        stat("API request rate", f"sum(rate(gpt2_requests_total{{{API}}}[{RATE}]))", "reqps",
             "Requests per second to the API endpoints (probes and scrapes excluded)."),
        stat("Non-2xx share",
             f'sum(rate(gpt2_requests_total{{{API}, status!~"2.."}}[{RATE}])) '
             f"/ sum(rate(gpt2_requests_total{{{API}}}[{RATE}]))",
             "percentunit", "Share of API requests answered with a non-2xx status.",
             thresholds=[(None, "green"), (0.05, "orange"), (0.25, "red")]),
        stat("Waiting requests", f"sum(gpt2_requests_waiting{{{INST}}})", "none",
             "Requests queued for a KV-cache slot, all selected instances. The HPA scales on "
             "its per-pod average.",
             thresholds=[(None, "green"), (32, "orange"), (205, "red")]),
        {
            "type": "table",
            "title": "Model info",
            "description": "gpt2_model_info per instance. load_format=dummy means random "
                           "weights: outputs are meaningless.",
            "datasource": DS,
            "targets": [target(f'gpt2_model_info{{model=~"$model", {INST}}}', "",
                               instant=True, range=False, format="table")],
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {"showHeader": True, "cellHeight": "sm"},
            "transformations": [{"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value": True, "__name__": True},
                "indexByName": {"instance": 0, "model": 1, "device": 2, "dtype": 3,
                                "load_format": 4},
            }}],
            "_size": (24, 5),
        },

        row("Traffic"),
        timeseries("Requests by status",
                   [target(f"sum by (status) (rate(gpt2_requests_total{{{INST}}}[{RATE}]))",
                           "{{status}}")],
                   "reqps", "HTTP responses per second by status code, every endpoint."),
        timeseries("Requests by endpoint",
                   [target(f"sum by (endpoint) (rate(gpt2_requests_total{{{INST}}}[{RATE}]))",
                           "{{endpoint}}")],
                   "reqps", "HTTP responses per second by route."),
        timeseries("Rejections by reason",
                   [target(f"sum by (reason) (rate(gpt2_requests_rejected_total{{{INST}}}[{RATE}]))",
                           "{{reason}}")],
                   "reqps", "Requests refused before reaching the engine: queue_full (429), "
                   "draining/not_ready (503), too_long/invalid (400), unauthorized (401)."),
        timeseries("Aborted requests",
                   [target(f"sum(rate(gpt2_requests_aborted_total{{{INST}}}[{RATE}]))", "aborted")],
                   "reqps", "Sequences aborted mid-flight, mostly clients that disconnected."),

        row("Latency"),
        timeseries("End-to-end latency",
                   quantiles("gpt2_request_duration_seconds", f'{INST}, endpoint=~"$endpoint"'),
                   "s", "Request duration quantiles over the endpoints chosen in `endpoint`."),
        timeseries("Time to first token",
                   quantiles("gpt2_time_to_first_token_seconds", INST),
                   "s", "From arrival to the first generated token (queue time + prefill)."),
        timeseries("Inter-token latency",
                   quantiles("gpt2_inter_token_latency_seconds", INST),
                   "s", "Gap between consecutive tokens of one sequence (one decode step, "
                   "longer when a prefill chunk shares the step)."),
        timeseries("Queue time",
                   quantiles("gpt2_request_queue_seconds", INST),
                   "s", "Time a request waited for a KV-cache slot."),

        row("Throughput and batching"),
        timeseries("Tokens per second",
                   [target(f"sum(rate(gpt2_prompt_tokens_total{{{INST}}}[{RATE}]))", "prompt"),
                    target(f"sum(rate(gpt2_generation_tokens_total{{{INST}}}[{RATE}]))", "generation"),
                    target(f"sum(rate(gpt2_scored_tokens_total{{{INST}}}[{RATE}]))", "scored")],
                   "short", "Prompt tokens prefilled, tokens generated and tokens scored per "
                   "second, all selected instances."),
        timeseries("Running and waiting",
                   [target(f"sum by (instance) (gpt2_requests_running{{{INST}}})",
                           "running {{instance}}"),
                    target(f"sum by (instance) (gpt2_requests_waiting{{{INST}}})",
                           "waiting {{instance}}")],
                   "none", "Sequences holding a KV-cache slot, and requests queued for one, per "
                   "instance. Running stays at or below GPT2_MAX_BATCH_SIZE."),
        timeseries("Batch size",
                   quantiles("gpt2_batch_size", INST, qs=(0.5, 0.95))
                   + [target(f"sum(rate(gpt2_batch_size_sum{{{INST}}}[{RATE}])) "
                             f"/ sum(rate(gpt2_batch_size_count{{{INST}}}[{RATE}]))", "mean")],
                   "none", "Sequences per engine step."),
        timeseries("Step duration by phase",
                   quantiles("gpt2_step_duration_seconds", INST, by="phase", qs=(0.5, 0.95)),
                   "s", "Engine step time: prefill-only, decode-only and mixed steps."),
        timeseries("Tokens per request",
                   [target(f"histogram_quantile({q}, sum by (le) (rate({m}_bucket{{{INST}}}[{RATE}])))",
                             f"{name} p{round(q * 100)}")
                      for m, name in (("gpt2_request_prompt_tokens", "prompt"),
                                      ("gpt2_request_generation_tokens", "generation"))
                      for q in (0.5, 0.95)],
                   "short", "Prompt and generated tokens per request."),
        timeseries("KV-cache usage",
                   [target(f"max by (instance) (gpt2_kv_cache_usage_ratio{{{INST}}})", "{{instance}}")],
                   "percentunit", "Share of KV-cache slots in use per instance.", max=1),
        timeseries("Prefix cache",
                   [target(f"sum(rate(gpt2_prefix_cache_hit_tokens_total{{{INST}}}[{RATE}])) "
                           f"/ sum(rate(gpt2_prefix_cache_queried_tokens_total{{{INST}}}[{RATE}]))", "hit ratio"),
                    target(f"sum(rate(gpt2_prefill_tokens_total{{{INST}}}[{RATE}])) "
                           f"/ sum(rate(gpt2_prefix_cache_queried_tokens_total{{{INST}}}[{RATE}]))",
                           "computed ratio")],
                   "percentunit", "Share of prompt tokens whose keys and values (and scores) were reused "
                   "from an earlier or running sequence, and share the model computed (GPT2_PREFIX_CACHING).",
                   max=1),
        timeseries("Prefix cache evictions",
                   [target(f"sum(rate(gpt2_prefix_cache_evictions_total{{{INST}}}[{RATE}]))", "evictions")],
                   "ops", "Kept prefixes dropped per second to make room for new sequences: high with a "
                   "low hit ratio means more slots (GPT2_MAX_BATCH_SIZE) would keep more."),

        row("Fair sharing"),
        timeseries("Queue time by key class",
                   quantiles("gpt2_key_class_queue_seconds", INST, by="key_class", qs=(0.5, 0.95)),
                   "s", "Time a caller's sequences waited for a KV-cache slot, by its API key's class "
                   "(`anonymous`: callers without keys). With fair sharing on, a class sending little "
                   "waits little even while another fills the queue.", w=8),
        timeseries("Sequences by key class",
                   [target(f"max by (key_class) (gpt2_key_class_sequences{{{INST}}})", "{{key_class}}")],
                   "none", "Engine sequences admitted and not finished, by key class (every API process "
                   "of an instance reports the same total).", w=8),
        timeseries("Requests by key class",
                   [target(f"sum by (key_class, status) (rate(gpt2_key_class_requests_total{{{INST}}}[{RATE}]))",
                           "{{key_class}} {{status}}")],
                   "reqps", "API requests per second by key class and status (429: refused past the "
                   "class's share or the key's concurrency).", w=8),

        row("Resources"),
        timeseries("Device memory",
                   [target(f"max by (instance) (gpt2_device_memory_used_bytes{{{INST}}})",
                           "used {{instance}}"),
                    target(f"max by (instance) (gpt2_device_memory_total_bytes{{{INST}}})",
                           "total {{instance}}")],
                   "bytes", "Accelerator memory used by the process and the device's total "
                   "(weights + KV cache + activations)."),
        timeseries("Process CPU",
                   [target(f"sum by (instance) (rate(process_cpu_seconds_total{{{INST}}}[{RATE}]))",
                           "{{instance}}")],
                   "none", "CPU cores used by the server process.", w=6),
        timeseries("Process resident memory",
                   [target(f"max by (instance) (process_resident_memory_bytes{{{INST}}})",
                           "{{instance}}")],
                   "bytes", "Host memory (RSS) of the server process.", w=6),
    ]


def layout(items: list[dict]) -> list[dict]:
    """Assign ids, refIds and gridPos left to right, wrapping at Grafana's 24 columns."""
    x = y = row_h = 0
    out = []
    for pid, panel in enumerate(items, start=1):
        w, h = panel.pop("_size")
        if x + w > 24 or panel["type"] == "row":
            x, y, row_h = 0, y + row_h, 0
        panel = {"id": pid, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **panel}
        for i, tgt in enumerate(panel.get("targets", [])):
            tgt["refId"] = chr(ord("A") + i)
        x, row_h = x + w, max(row_h, h)
        if panel["type"] == "row":
            x, y, row_h = 0, y + h, 0
        out.append(panel)
    return out


def query_var(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time-range change: new replicas appear without a page reload
        "includeAll": True,
        "multi": True,
        "current": {},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def dashboard() -> dict:
    return {
        "id": None,
        "uid": "gpt2-serve",
        "title": "gpt2-serve",
        "description": "GPT-2 serving: traffic, latency, batching, KV cache and device memory.",
        "tags": ["gpt2-serve", "llm", "inference"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,  # shared crosshair
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {}, "options": [], "refresh": 1, "regex": "",
             "hide": 0, "includeAll": False, "multi": False},
            query_var("model", "Model", "label_values(gpt2_model_info, model)"),
            query_var("instance", "Instance",
                      'label_values(gpt2_model_info{model=~"$model"}, instance)'),
            query_var("endpoint", "Endpoint",
                      'label_values(gpt2_request_duration_seconds_count{instance=~"$instance"}, endpoint)'),
        ]},
        "panels": layout(panels()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
