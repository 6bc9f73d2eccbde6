"""How the command line's tools (`calibrate`, `train-detector`) reach a gpt2-serve: over HTTP at
--url, or an app built in this process from the GPT2_* settings (same routes, same numbers).

This is the top layer: app/cli.py hands `connect` to the commands (as typer's ctx.obj), so
app/detect never imports the app it calls.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


@contextmanager
def connect(url: str | None, api_key: str | None, timeout: float, **overrides) -> Iterator[httpx.Client]:
    """An httpx client of the server at `url`, or of an in-process app built from the GPT2_*
    settings and `overrides` (loaded and ready when this yields)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if url is not None:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as client:
            yield client
        return
    from fastapi.testclient import TestClient

    from app.api.lifecycle import Phase
    from app.config import Settings
    from app.main import create_app

    settings = Settings(**overrides)
    if settings.api_keys and not api_key:
        headers = {"Authorization": f"Bearer {settings.api_keys[0]}"}
    app = create_app(settings)
    with TestClient(app, headers=headers) as client:  # runs the lifespan: loads the model
        lifecycle = app.state.gpt2.lifecycle
        while lifecycle.phase is Phase.LOADING:
            time.sleep(0.1)
        if not lifecycle.is_ready:  # failed to load, or the engine died
            raise RuntimeError(f"the server is not ready ({lifecycle.phase.value}): {lifecycle.reason}")
        yield client
