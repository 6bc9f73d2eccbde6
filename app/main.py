"""The FastAPI application: create_app(settings) and the lifespan that owns the engine.

The model loads in the background after the server starts listening, so /healthz answers at
once and /readyz says 503 until the model is loaded, warmed up and the engine loop runs.
"""

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from app import __version__
from app.api import completions, health, models, score, tokenize
from app.api.context import RequestContextMiddleware
from app.api.deps import AppState, check_api_key
from app.api.errors import install_error_handlers
from app.api.ui import install_ui
from app.config import Settings
from app.detect.judge import load_judge
from app.engine.async_engine import AsyncEngine
from app.metrics import install_metrics
from app.service import Service, build_engine

log = logging.getLogger(__name__)

DESCRIPTION = """OpenAI-compatible completions and log-probability scoring for GPT-2 models,
served from one continuous-batching engine."""


# what any API route may answer besides its own responses (documented in /openapi.json)
ERRORS = {400: {"description": "invalid request (the message names the field)"},
          401: {"description": "missing or wrong API key (when GPT2_API_KEYS is set)"},
          404: {"description": "unknown model"}, 413: {"description": "body over GPT2_MAX_REQUEST_BYTES"},
          503: {"description": "loading, draining, or the engine stopped"}}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="gpt2-serve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.gpt2 = AppState(settings)
    install_error_handlers(app)
    app.include_router(health.router)
    guarded = {"dependencies": [Depends(check_api_key)], "responses": ERRORS}
    app.include_router(models.router, **guarded)
    app.include_router(completions.router, **guarded)
    app.include_router(score.router, **guarded)
    app.include_router(tokenize.router, **guarded)
    if settings.ui:
        install_ui(app)
    app.add_middleware(RequestContextMiddleware, state=app.state.gpt2)
    install_metrics(app)  # outermost: it also sees the 413s answered from Content-Length
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: AppState = app.state.gpt2
    loading = asyncio.create_task(load_service(state))
    try:
        yield
    finally:
        loading.cancel()
        if state.service is not None:
            state.service.engine.stop()


async def load_service(state: AppState) -> None:
    """Build the engine on its own thread (off the event loop), then run its step loop there."""
    async_engine = AsyncEngine()
    try:
        engine, tokenizer, info = await async_engine.call(build_engine, state.settings)
        judge = load_judge(state.settings.detector, info)  # None without GPT2_DETECTOR; refuses another model's
    except Exception as exc:
        async_engine.stop()
        state.load_error = exc
        log.critical("start-up failed: %s", exc, exc_info=not isinstance(exc, (OSError, RuntimeError)))
        if state.on_fatal is not None:
            state.on_fatal()
        return
    async_engine.start(engine)
    state.service = Service(state.settings, info, tokenizer, async_engine, judge)
    for hook in state.on_ready:
        hook(state.service)
    log.info("ready: serving %s", info.name)
