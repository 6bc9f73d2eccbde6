#!/usr/bin/env python3
"""Writes deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml.

alerts.yml is the one source of the alert rules (and has the promtool unit tests); on
Kubernetes prometheus-operator wants them wrapped in a PrometheusRule object. After editing
alerts.yml:

    python deploy/k8s/make_prometheusrule.py          # rewrite the PrometheusRule
    python deploy/k8s/make_prometheusrule.py --check  # exit 1 if it is stale (tests do this)

Needs PyYAML (a dev dependency).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "deploy" / "prometheus" / "alerts.yml"
OUT = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/make_prometheusrule.py: edit those.
# prometheus-operator CRD. Like the ServiceMonitor, it may need your Prometheus's ruleSelector
# label (kube-prometheus-stack: release: <release name>).
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, as in alerts.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    rules = yaml.safe_load(SOURCE.read_text())
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "gpt2-serve", "labels": {"app.kubernetes.io/name": "gpt2-serve"}},
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python deploy/k8s/make_prometheusrule.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
