"""What the deployment files name exists in the running service: probe and scrape paths answer,
and every metric a manifest, alert or dashboard uses is on a real /metrics scrape."""

import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\bgpt2_[a-z0-9_]*[a-z0-9]\b")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def deployment_files() -> list[Path]:
    files = [*(ROOT / "deploy").rglob("*.yaml"), *(ROOT / "deploy").rglob("*.yml"),
             *(ROOT / "deploy").rglob("*.json"), ROOT / "docker-compose.yml", ROOT / "Dockerfile"]
    return [f for f in files if f.is_file()]


def http_paths(node) -> set[str]:
    """Every `path:` under a probe (httpGet) or a scrape endpoint in a YAML document."""
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("path", "metrics_path") and isinstance(value, str) and value.startswith("/"):
                found.add(value)
            found |= http_paths(value)
    elif isinstance(node, list):
        for item in node:
            found |= http_paths(item)
    return found


def test_every_metric_the_deployment_files_name_is_exported(live):
    scrape = live.http().get("/metrics").text
    exported = {s.name for family in text_string_to_metric_families(scrape) for s in family.samples}
    exported |= {name.removesuffix(suffix) for name in exported for suffix in SUFFIXES if name.endswith(suffix)}
    used = {}
    for path in deployment_files():
        for name in METRIC.findall(path.read_text()):  # "gpt2-serve" (a job, a name) does not match
            used.setdefault(name, path.relative_to(ROOT))
    assert len(used) >= 15  # the files really are read
    missing = {name: str(where) for name, where in used.items() if name not in exported}
    assert missing == {}


def test_probe_and_scrape_paths_answer(live):
    paths = set()
    for path in [*(ROOT / "deploy/k8s").rglob("*.yaml"), ROOT / "deploy/prometheus/prometheus.yml"]:
        for doc in yaml.safe_load_all(path.read_text()):
            paths |= http_paths(doc)
    assert {"/healthz", "/readyz", "/metrics"} <= paths
    for path in paths:
        assert live.http().get(path).status_code == 200, path
