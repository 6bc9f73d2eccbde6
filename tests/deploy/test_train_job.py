"""deploy/k8s/train-job.yaml and overlays/trained: valid objects, and the Job writes the model
where the serving Deployment reads it, with a `gpt2-serve train` command line that parses."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

from app.cli import cli

ROOT = Path(__file__).resolve().parents[2]
JOB_FILE = ROOT / "deploy/k8s/train-job.yaml"
OVERLAY = ROOT / "deploy/k8s/overlays/trained"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # validated by scripts/lint-deploy.sh's CRD check


def by_kind(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects}


@pytest.fixture(scope="module")
def job_objects() -> dict[str, dict]:
    return by_kind([d for d in yaml.safe_load_all(JOB_FILE.read_text()) if d])


@pytest.fixture(scope="module")
def served(require_tool) -> list[dict]:
    out = subprocess.run([require_tool("kubectl"), "kustomize", str(OVERLAY)], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_objects_are_valid(version, served, require_tool, tmp_path):
    builtin = tmp_path / "served.yaml"
    builtin.write_text(yaml.safe_dump_all([o for o in served if o["kind"] not in CRD_KINDS]))
    for path in (JOB_FILE, builtin):
        result = subprocess.run([require_tool("kubernetes-validate"), "--strict", "--kubernetes-version", version,
                                 str(path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Couldn't find schema" not in result.stdout + result.stderr, \
            result.stdout + result.stderr


def train_argv(job: dict) -> list[str]:
    """The `gpt2-serve train` arguments of the Job's shell command, variables filled in."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["args"][0].split("exec ", 1)[1]
    words = shlex.split(script.replace("$RESUME", "--resume"))
    return words[words.index("gpt2-serve") + 2:]  # after `gpt2-serve train`


def test_job_command_is_a_valid_train_command_line(job_objects):
    argv = train_argv(job_objects["Job"])
    train = typer.main.get_command(cli).commands["train"]
    ctx = train.make_context("train", list(argv))  # parses like the real command; raises on a bad option
    assert ctx.params["resume"] and ctx.params["data"] and ctx.params["output"]


def test_job_writes_where_the_deployment_reads(job_objects, served):
    job, claim = job_objects["Job"], job_objects["PersistentVolumeClaim"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    output = train_argv(job)[train_argv(job).index("-o") + 1]
    job_mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    job_claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
    (job_volume,) = [name for name, c in job_claims.items() if c == claim["metadata"]["name"]]
    assert output.startswith(job_mounts[job_volume] + "/")

    objects = by_kind(served)
    deployment = objects["Deployment"]
    (serving,) = deployment["spec"]["template"]["spec"]["containers"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in serving["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert mount["readOnly"] is True
    model = objects["ConfigMap"]["data"]["GPT2_MODEL"]
    assert model == mount["mountPath"] + output.removeprefix(job_mounts[job_volume])
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # replicas on other nodes read it


def test_job_pods_find_each_other(job_objects):
    job, service = job_objects["Job"], job_objects["Service"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert int(env["NNODES"]) == spec["completions"]
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    master = f"--master_addr={job['metadata']['name']}-0.{service['metadata']['name']}"
    assert master in pod["containers"][0]["args"][0]
    resources = pod["containers"][0]["resources"]
    assert str(resources["limits"]["nvidia.com/gpu"]) == env["NPROC_PER_NODE"]


def test_job_pod_security(job_objects):
    pod = job_objects["Job"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= mounts
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"].startswith("/tmp") and env["HF_HOME"].startswith("/tmp")
