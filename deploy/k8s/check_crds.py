#!/usr/bin/env python3
"""Split rendered manifests into built-in objects and prometheus-operator objects; check the latter.

kubernetes-validate only knows the built-in API (it merely *warns* on anything else, so a typo'd
kind would pass). scripts/lint-deploy.sh therefore hands it only the built-in objects (written to
--builtin-out, and treats any "Couldn't find schema" as a failure), while the two CRD kinds this
project uses are checked here:

- ServiceMonitor, PrometheusRule (monitoring.coreos.com/v1) are the only custom kinds allowed;
- their spec / endpoint / rule-group / rule keys must be fields of the prometheus-operator v1 API
  (lists below, taken from the API types as published in @kubernetes-models/prometheus-operator
  6.0.0), so a misspelt key fails instead of being silently pruned by the API server;
- durations look like Prometheus durations, required fields are present;
- PrometheusRule's spec is written to --rules-out for `promtool check rules`, which validates the
  PromQL and templates for real.

    python deploy/k8s/check_crds.py rendered.yaml --builtin-out b.yaml --rules-out r.yml
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

GROUP = "monitoring.coreos.com/v1"

SERVICEMONITOR_SPEC = {
    "attachMetadata", "bodySizeLimit", "convertClassicHistogramsToNHCB", "endpoints",
    "fallbackScrapeProtocol", "jobLabel", "keepDroppedTargets", "labelLimit",
    "labelNameLengthLimit", "labelValueLengthLimit", "namespaceSelector",
    "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor", "podTargetLabels",
    "sampleLimit", "scrapeClass", "scrapeClassicHistograms", "scrapeNativeHistograms",
    "scrapeProtocols", "selector", "selectorMechanism", "serviceDiscoveryRole", "targetLabels",
    "targetLimit",
}
ENDPOINT = {
    "authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2",
    "filterRunning", "followRedirects", "honorLabels", "honorTimestamps", "interval",
    "metricRelabelings", "noProxy", "oauth2", "params", "path", "port", "proxyConnectHeader",
    "proxyFromEnvironment", "proxyUrl", "relabelings", "scheme", "scrapeTimeout", "targetPort",
    "tlsConfig", "trackTimestampsStaleness",
}
PROMETHEUSRULE_SPEC = {"groups"}
RULE_GROUP = {"interval", "labels", "limit", "name", "partial_response_strategy", "query_offset",
              "rules"}
RULE = {"alert", "annotations", "expr", "for", "keep_firing_for", "labels", "record"}
METADATA = {"name", "namespace", "labels", "annotations"}

DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")


def _keys(errors: list[str], where: str, obj: object, allowed: set[str],
          required: tuple[str, ...] = ()) -> None:
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected a mapping, got {type(obj).__name__}")
        return
    for key in sorted(set(obj) - allowed):
        errors.append(f"{where}: unknown field {key!r}")
    for key in required:
        if key not in obj:
            errors.append(f"{where}: missing required field {key!r}")


def _duration(errors: list[str], where: str, value: object) -> None:
    if value is not None and not (isinstance(value, str) and DURATION.match(value)):
        errors.append(f"{where}: {value!r} is not a Prometheus duration")


def check_servicemonitor(doc: dict, errors: list[str]) -> None:
    name = f"ServiceMonitor/{doc['metadata'].get('name')}"
    spec = doc.get("spec")
    _keys(errors, f"{name}.spec", spec, SERVICEMONITOR_SPEC, ("selector", "endpoints"))
    if not isinstance(spec, dict):
        return
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        errors.append(f"{name}.spec.endpoints: empty")
    for i, ep in enumerate(endpoints):
        where = f"{name}.spec.endpoints[{i}]"
        _keys(errors, where, ep, ENDPOINT)
        if isinstance(ep, dict):
            if "port" not in ep and "targetPort" not in ep:
                errors.append(f"{where}: needs port (a Service port name) or targetPort")
            _duration(errors, f"{where}.interval", ep.get("interval"))
            _duration(errors, f"{where}.scrapeTimeout", ep.get("scrapeTimeout"))


def check_prometheusrule(doc: dict, errors: list[str]) -> list:
    name = f"PrometheusRule/{doc['metadata'].get('name')}"
    spec = doc.get("spec")
    _keys(errors, f"{name}.spec", spec, PROMETHEUSRULE_SPEC, ("groups",))
    groups = spec.get("groups", []) if isinstance(spec, dict) else []
    for g, group in enumerate(groups):
        where = f"{name}.spec.groups[{g}]"
        _keys(errors, where, group, RULE_GROUP, ("name", "rules"))
        for r, rule in enumerate(group.get("rules", []) if isinstance(group, dict) else []):
            rwhere = f"{where}.rules[{r}]"
            _keys(errors, rwhere, rule, RULE, ("expr",))
            if isinstance(rule, dict):
                if ("alert" in rule) == ("record" in rule):
                    errors.append(f"{rwhere}: needs exactly one of alert / record")
                _duration(errors, f"{rwhere}.for", rule.get("for"))
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered", type=Path, help="multi-document YAML (kubectl kustomize output)")
    parser.add_argument("--builtin-out", type=Path, required=True,
                        help="write the non-CRD documents here (for kubernetes-validate)")
    parser.add_argument("--rules-out", type=Path, required=True,
                        help="write the PrometheusRule groups here (for promtool check rules)")
    args = parser.parse_args()

    docs = [d for d in yaml.safe_load_all(args.rendered.read_text()) if d]
    builtin, groups, errors = [], [], []
    seen = {"ServiceMonitor": 0, "PrometheusRule": 0}
    for doc in docs:
        if not str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
            builtin.append(doc)
            continue
        kind = doc.get("kind")
        if doc.get("apiVersion") != GROUP or kind not in seen:
            errors.append(f"{doc.get('apiVersion')} {kind}: not a kind this check knows")
            continue
        seen[kind] += 1
        _keys(errors, f"{kind}.metadata", doc.get("metadata"), METADATA, ("name",))
        if not isinstance(doc.get("metadata"), dict):
            continue
        if kind == "ServiceMonitor":
            check_servicemonitor(doc, errors)
        else:
            groups += check_prometheusrule(doc, errors)

    args.builtin_out.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    args.rules_out.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    for message in errors:
        print(f"ERROR {args.rendered}: {message}", file=sys.stderr)
    print(f"{args.rendered}: {len(builtin)} built-in objects, {seen['ServiceMonitor']} "
          f"ServiceMonitor, {seen['PrometheusRule']} PrometheusRule "
          f"({sum(len(g.get('rules', [])) for g in groups)} rules)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
