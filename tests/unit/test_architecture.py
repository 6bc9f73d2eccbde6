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


def test_engine_and_model_never_import_the_web_stack():
    offenders = []
    files = [*(APP / "engine").rglob("*.py"), *(APP / "model").rglob("*.py")]
    assert len(files) >= 8  # the rule must be checking real files
    for path in files:
        for module in imported_modules(path):
            if module.split(".")[0] in {"fastapi", "starlette", "uvicorn", "pydantic", "app"} and not (
                    module.startswith(("app.engine", "app.model"))):
                offenders.append(f"{path.relative_to(APP)} imports {module}")
    assert offenders == []


def test_the_rule_would_catch_an_offender(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from fastapi import FastAPI\nimport starlette.responses\n")
    assert {"fastapi", "starlette.responses"} <= imported_modules(bad)
