"""Rules that keep the layers apart."""

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# the engine process's main reads the settings, sets up its logs and may measure embedding statistics
ENGINE_PROCESS_MAIN = {"engine/process.py": ("app.config", "app.logs", "app.embedding_stats")}


def test_engine_and_model_never_import_the_web_stack():
    offenders = []
    files = [*(APP / "engine").rglob("*.py"), *(APP / "model").rglob("*.py")]
    assert len(files) >= 8  # the rule must be checking real files
    for path in files:
        name = str(path.relative_to(APP))
        for module in imported_modules(path):
            if module.split(".")[0] in {"fastapi", "starlette", "uvicorn", "pydantic", "app"} and not (
                    module.startswith(("app.engine", "app.model", *ENGINE_PROCESS_MAIN.get(name, ())))):
                offenders.append(f"{name} imports {module}")
    assert offenders == []


def test_the_rule_would_catch_an_offender(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from fastapi import FastAPI\nimport starlette.responses\n")
    assert {"fastapi", "starlette.responses"} <= imported_modules(bad)


def offenders(paths, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in paths:
        for module in imported_modules(path):
            if module.startswith(forbidden) and not module.startswith(allowed):
                found.append(f"{path.name} imports {module}")
    return found


ENGINE_INSIDES = ("app.engine.core", "app.engine.runner", "app.engine.scheduler", "app.engine.sampler")


def test_the_model_imports_nothing_from_the_engine():
    files = list((APP / "model").rglob("*.py"))
    assert len(files) >= 4
    assert offenders(files, ("app.engine", "app.api", "app.service", "app.metrics")) == []


def test_the_engine_client_is_the_only_door():
    """Outside the engine, nothing touches the engine's insides (the engine process's main is
    engine/process.py); the API, metrics, CLI and server use the client."""
    files = [p for p in APP.rglob("*.py") if "engine" not in p.parts and "model" not in p.parts]
    assert len(files) >= 15
    assert offenders(files, ENGINE_INSIDES) == []


def test_the_judges_tools_never_import_the_app_they_call():
    """app/detect reaches a server only through the client the command line hands it (app/connection.py)."""
    files = list((APP / "detect").rglob("*.py"))
    assert len(files) >= 10
    assert offenders(files, ("app.main", "app.api", "app.cli", "app.server", "app.connection")) == []


def test_metrics_know_nothing_of_the_http_layer():
    assert offenders([APP / "metrics.py"], ("app.api", "fastapi", "starlette")) == []


def test_the_api_process_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, app.main, app.server, app.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=APP.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_door_rule_would_catch_an_offender(tmp_path):
    bad = tmp_path / "route.py"
    bad.write_text("from app.engine.scheduler import Scheduler\nimport app.engine.client\n")
    assert offenders([bad], ENGINE_INSIDES) == ["route.py imports app.engine.scheduler"]
