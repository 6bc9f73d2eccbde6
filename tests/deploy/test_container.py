"""Dockerfile, .dockerignore, docker-compose.yml, Prometheus and Grafana provisioning agree.

The image cannot be built in tests (no Docker engine); these check the contract the files
encode: variants, user, port, cache path, healthcheck, signals, and the cross-file wiring.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
HF_HOME = "/cache/huggingface"
PORT = 8000


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def envs() -> dict[str, str]:
    out = {}
    for word, rest in instructions():
        if word == "ENV":
            out.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return out


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the << merge keys


# --- Dockerfile ----------------------------------------------------------------------------------

def test_variants_and_torch_builds():
    ins = instructions()
    args = [rest for word, rest in ins if word == "ARG"]
    assert "VARIANT=cuda" in args
    stages = {m.group(1) for w, r in ins if w == "FROM" and (m := re.search(r" AS (\S+)", r))}
    assert {"torch-cpu", "torch-cuda", "runtime-cpu", "runtime-cuda", "builder", "serve"} <= stages
    froms = [r for w, r in ins if w == "FROM"]
    assert any(r.startswith("torch-${VARIANT}") for r in froms)
    assert any(r.startswith("runtime-${VARIANT}") for r in froms)
    text = DOCKERFILE.read_text()
    assert "TORCH_VERSION=2.13.0" in text
    assert "download.pytorch.org/whl/cu" in text and "download.pytorch.org/whl/cpu" in text
    assert froms[0].startswith("${PYTHON_IMAGE}") and "python:3.11-slim" in text


def test_runtime_contract():
    ins = instructions()
    env = envs()
    assert env["GPT2_HOST"] == "0.0.0.0"
    assert env["HF_HOME"] == HF_HOME
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] == "10001", "must end as the numeric non-root user"
    assert ("EXPOSE", str(PORT)) in ins
    assert ("VOLUME", f'["{HF_HOME}"]') in ins
    # Exec form, so the server is PID 1 and gets SIGTERM (and drains) itself.
    entry = [json.loads(rest) for word, rest in ins if word == "ENTRYPOINT"]
    cmd = [json.loads(rest) for word, rest in ins if word == "CMD"]
    assert entry == [["gpt2-serve"]] and cmd == [["serve"]]
    (health,) = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert "/healthz" in health and "CMD [" in health


def test_bake_model_goes_offline_outside_the_cache_volume():
    ins = instructions()
    assert 'BAKE_MODEL=""' in [rest for word, rest in ins if word == "ARG"]
    text = DOCKERFILE.read_text()
    assert "gpt2-serve download" in text
    assert "HF_HUB_OFFLINE=1" in text
    hub = re.search(r"HF_HUB_CACHE=(\S+)", text.split("AS serve-baked", 1)[1]).group(1)
    assert not hub.startswith(HF_HOME), "a volume at HF_HOME would hide baked weights"
    assert [r for w, r in ins if w == "FROM"][-1].startswith("serve${BAKE_MODEL:+-baked}")


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins; ! re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p.split("/")[-1], pattern)
               for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "tests/unit/test_x.py", "bench/results/a.json",
                 ".pytest_cache/v", "app/__pycache__/main.cpython-311.pyc", ".env"):
        assert _ignored(path, patterns), f"{path} would be sent to the build"
    for src in copied_sources():
        assert not _ignored(f"{src}/x" if (ROOT / src).is_dir() else src, patterns), \
            f".dockerignore drops {src}, which the Dockerfile copies"


def copied_sources() -> list[str]:
    return [src for w, r in instructions() if w == "COPY" and "--from" not in r
            for src in r.split()[:-1]]


def test_dockerfile_copy_sources_exist():
    # README.md is also pyproject's `readme`: `pip install .` fails without it.
    for src in copied_sources():
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"


# --- docker-compose ------------------------------------------------------------------------------

def test_compose_gpu_service(compose):
    svc = compose["services"]["gpt2-serve"]
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert svc["build"]["args"]["VARIANT"] == "cuda"
    assert svc["profiles"] == ["gpu"]


def test_compose_cpu_variant(compose):
    svc = compose["services"]["gpt2-serve-cpu"]
    assert svc["profiles"] == ["cpu"]
    assert svc["build"]["args"]["VARIANT"] == "cpu"
    assert "deploy" not in svc
    assert svc["environment"]["GPT2_DEVICE"] == "cpu"
    # Prometheus scrapes gpt2-serve:8000 whichever variant runs.
    assert "gpt2-serve" in svc["networks"]["default"]["aliases"]


@pytest.mark.parametrize("name", ["gpt2-serve", "gpt2-serve-cpu"])
def test_compose_server_services(compose, name):
    from app.config import Settings

    svc = compose["services"][name]
    assert f"hf-cache:{HF_HOME}" in svc["volumes"]
    assert "hf-cache" in compose["volumes"]
    assert svc["ports"] == [f"127.0.0.1:{PORT}:{PORT}"]
    grace = float(svc["stop_grace_period"].rstrip("s"))
    drain = float(re.search(r":-(\d+)", svc["environment"]["GPT2_DRAIN_TIMEOUT"]).group(1))
    assert grace > drain
    fields = {f"GPT2_{f.upper()}" for f in Settings.model_fields}
    assert {k for k in svc["environment"] if k.startswith("GPT2_")} <= fields


def test_compose_monitoring(compose):
    prom = compose["services"]["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] if v.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]

    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    gmounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    assert gmounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    for src in list(mounts.values()) + list(gmounts.values()):
        assert (ROOT / src).exists(), src
    # The dashboards provider reads the folder compose mounts the dashboards into.
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"]
    dash_dir = next(k for k, v in gmounts.items() if v == "./deploy/grafana/dashboards")
    assert [p["options"]["path"] for p in providers] == [dash_dir]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dash_dir}/gpt2-serve.json"
    assert (ROOT / "deploy/grafana/dashboards/gpt2-serve.json").exists()


# --- Prometheus and Grafana configuration ------------------------------------------------------

def test_prometheus_scrapes_the_service(compose):
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "gpt2-serve"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"] == [{"targets": [f"gpt2-serve:{PORT}"]}]


def test_grafana_datasource_points_at_compose_prometheus(compose):
    ds = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (prom,) = ds["datasources"]
    assert prom["type"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
