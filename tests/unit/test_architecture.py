"""Rules that keep the layers apart."""

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"


def imported_modules(path: Path, with_names: bool = False) -> set[str]:
    """The modules `path` imports, anywhere in it (functions too) but for `if TYPE_CHECKING:` blocks,
    which never run. With `with_names`, also `package.name` for each `from package import name`."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # (drop the typing-only blocks before walking the imports)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            node.body = []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if with_names:
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


# the engine process's main reads the settings, sets up its logs and may measure embedding statistics
ENGINE_PROCESS_MAIN = {"engine/process.py": ("app.config", "app.logs", "app.embedding_stats")}


# Who may import whom, by room (a package under app/, or a top-level module): the picture of
# README's "How it works", kept true. A room imports itself freely; an edge not listed fails.
ROOMS = {
    "model": set(),  # torch only: GPT-2, the loader, the tokenizer, sampling maths
    "engine": {"model"},  # the engine process (and the client, its one door)
    "train": {"model"},
    "config": set(),
    "logs": {"config"},
    "scoring": {"engine"},  # /v1/score's maths, over the engine's score types
    "detect": {"scoring"},  # the judge, calibrate and train-detector (reach a server through a client)
    "metrics": {"engine"},
    "embedding_stats": {"config", "detect", "engine", "model"},  # (measured in the engine process)
    "engine.process": {"config", "embedding_stats", "engine", "logs", "model"},  # the engine process's main
    "service": {"config", "detect", "engine", "engine.process", "model"},  # the API side's composition
    "api": {"config", "detect", "engine", "metrics", "model", "scoring", "service"},
    "main": {"api", "config", "detect", "engine", "logs", "service"},
    "connection": {"api", "config", "main"},
    "server": {"api", "config", "engine", "engine.process", "logs", "main"},
    "cli": {"config", "connection", "detect", "logs", "model", "server", "train"},
}


def room(module: str) -> str | None:
    if module == "app.engine.process":  # the engine process's main: its composition root, as service.py is the API's
        return "engine.process"
    parts = module.split(".")
    return parts[1] if parts[0] == "app" and len(parts) > 1 else None


def modules() -> dict[str, Path]:
    """Every module of the app by its dotted name."""
    found = {}
    for path in APP.rglob("*.py"):
        found[".".join(path.relative_to(APP.parent).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def test_each_room_imports_only_the_rooms_below_it():
    crossings = set()
    for name, path in modules().items():
        mine = room(name)
        for module in imported_modules(path):
            theirs = room(module)
            if theirs is not None and theirs != mine:
                crossings.add((mine, theirs, name))
    assert len(crossings) >= 20  # the rule must be checking real imports
    assert {room for room, _, _ in crossings} <= set(ROOMS), "a new room: place it in ROOMS"
    assert sorted(f"{name} imports app.{theirs}" for mine, theirs, name in crossings if theirs not in ROOMS[mine]) == []


def test_the_rooms_are_layers():
    """The allow-list has no circle: the rooms can be stacked, each importing only the ones below."""
    placed: list[str] = []
    while len(placed) < len(ROOMS):
        ready = [r for r, below in ROOMS.items() if r not in placed and below <= set(placed)]
        assert ready, f"a circle among {sorted(set(ROOMS) - set(placed))}"
        placed.extend(sorted(ready))


def test_no_module_imports_itself_through_others():
    """0 import circles among the app's modules (imports inside functions count; typing-only don't)."""
    names = modules()
    graph = {name: {m for m in imported_modules(path, with_names=True) if m in names and m != name}
             for name, path in names.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(name):] + (name,)))
        if name not in done:
            for imported in sorted(graph[name]):
                visit(imported, (*path, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())


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
