"""Fixtures for the deployment-artifact tests (Dockerfile, compose, k8s, Prometheus, Grafana).

These tests read files only; none needs a model, a GPU, Docker or a network. Some shell out to
the lint tools (promtool, kubectl kustomize, ...): without the tool they skip locally, but fail
under CI (CI=true), where the tools of scripts/lint-deploy.sh must be installed.

Helpers are fixtures (not importable functions) so that no test module imports this file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    venv_bin = ROOT / ".venv" / "bin"
    found = shutil.which(name, path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    message = f"{name} is not installed (install commands: scripts/lint-deploy.sh header)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def require_tool() -> Callable[[str], str]:
    """require_tool("promtool") -> its path; skips (fails under CI) when it is missing."""
    return _tool


@pytest.fixture(scope="session", params=["gpu", "cpu"])
def rendered(request) -> tuple[str, list[dict]]:
    """(overlay, objects) as `kubectl kustomize deploy/k8s/overlays/<overlay>` renders them."""
    kubectl = _tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy/k8s/overlays" / request.param)],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return request.param, [doc for doc in yaml.safe_load_all(out) if doc]
