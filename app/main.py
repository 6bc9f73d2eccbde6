"""The FastAPI application: create_app(settings) and the lifespan that owns the engine client.

The engine core starts in a process of its own (or, under several API processes, is reached
through the handle the supervisor gives) after the server starts listening, so /healthz answers
at once and /readyz says 503 until the model is loaded, warmed up and the engine runs.
"""

import asyncio
import contextlib
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from app import __version__
from app.api import completions, embeddings, health, models, score, tokenize
from app.api.context import RequestContextMiddleware
from app.api.deps import AppState, check_api_key
from app.api.errors import install_error_handlers
from app.api.lifecycle import drain_on_signals
from app.api.observability import install_metrics
from app.api.ui import install_ui
from app.config import Settings
from app.detect.judge import load_judge
from app.engine.admission import Admission
from app.engine.client import EngineHandle
from app.logs import configure_logging
from app.service import Service, connect_engine, load_tokenizer, start_engine

log = logging.getLogger(__name__)

DESCRIPTION = """OpenAI-compatible completions and log-probability scoring for GPT-2 models,
served from one continuous-batching engine."""


# what any API route may answer besides its own responses (documented in /openapi.json)
ERRORS = {400: {"description": "invalid request (the message names the field)"},
          401: {"description": "missing or wrong API key (when GPT2_API_KEYS is set)"},
          404: {"description": "unknown model"}, 413: {"description": "body over GPT2_MAX_REQUEST_BYTES"},
          503: {"description": "loading, draining, or the engine stopped"}}


def create_app(settings: Settings | None = None, engine: EngineHandle | None = None) -> FastAPI:
    """The app; its lifespan starts an engine process of its own, or connects to `engine`. Called
    with no settings, as a server's factory (`uvicorn --factory app.main:create_app`, gunicorn), it
    reads GPT2_* and sets up the logs as `gpt2-serve serve` does (else the request log is lost)."""
    if settings is None:
        settings = Settings()
        configure_logging(settings)
    public_docs = settings.docs == "public"
    app = FastAPI(title="gpt2-serve", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs" if public_docs else None, openapi_url="/openapi.json" if public_docs else None)
    app.state.gpt2 = AppState(settings, shares_path=engine and engine.shares_path, row=engine.row if engine else 0)
    app.state.engine_handle = engine
    if not settings.api_keys:
        log.warning("GPT2_API_KEYS is unset: the API answers anyone who can reach it")
    install_error_handlers(app)
    app.include_router(health.router)
    guarded = {"dependencies": [Depends(check_api_key)], "responses": ERRORS}
    if settings.docs == "keys":
        install_guarded_docs(app, guarded["dependencies"])
    app.include_router(models.router, **guarded)
    app.include_router(completions.router, **guarded)
    app.include_router(score.router, **guarded)
    app.include_router(embeddings.router, **guarded)
    app.include_router(tokenize.router, **guarded)
    if settings.ui:
        install_ui(app)
    app.add_middleware(RequestContextMiddleware, state=app.state.gpt2)
    install_metrics(app)  # outermost: it also sees the 413s answered from Content-Length
    return app


def install_guarded_docs(app: FastAPI, dependencies: list) -> None:
    """GPT2_DOCS=keys: /openapi.json and /docs need a key, like the API (a browser cannot send one,
    so /docs is for clients that can: fetch the schema with the Authorization header)."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=dependencies)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: AppState = app.state.gpt2
    handle, loading = app.state.engine_handle, None
    drain_on_signals(state.lifecycle)  # SIGTERM drains first, however the app is run (lifecycle.py)
    state.parser.start()  # its process, before the first large body
    if handle is None:  # load in the background: /healthz answers while the model loads
        loading = asyncio.create_task(load_service(state, None))
    else:  # one API process of several: the engine is up and connecting takes a second; accept
        await load_service(state, handle)  # no connection before that (it would get a 503)
    try:
        yield
    finally:
        if loading is not None:
            loading.cancel()  # SIGTERM while loading: the engine process is killed at once
            with contextlib.suppress(asyncio.CancelledError):
                await loading
        if state.service is not None:
            await state.service.engine.shutdown()
        await asyncio.to_thread(state.parser.stop)


async def load_service(state: AppState, handle: EngineHandle | None) -> None:
    """Start (or connect to) the engine, load the tokenizer, and tell whoever waits (metrics)."""
    settings, engine = state.settings, None
    try:
        admission = Admission(state.shares, state.row, settings.max_batch_size + settings.max_queue,
                              state.callers.weights, fair=settings.fair_share)
        engine = await (start_engine(settings, admission) if handle is None
                        else connect_engine(settings, handle, admission))
        engine.death_listeners.append(state.lifecycle.engine_died)  # a death while the rest loads counts too
        if not engine.is_alive:  # it died before anyone listened
            state.lifecycle.engine_died(engine.supervisor.dead)
        tokenizer = await load_tokenizer(engine.info)
        judge = load_judge(settings.detector, engine.info)  # None without GPT2_DETECTOR; refuses another model's
    except asyncio.CancelledError:
        if engine is not None:
            await engine.shutdown()
        raise
    except Exception as exc:
        if engine is not None:
            await engine.shutdown()
        log.critical("start-up failed: %s", exc, exc_info=not isinstance(exc, (OSError, RuntimeError)))
        state.lifecycle.failed(exc)
        return
    state.service = Service(settings, engine.info, tokenizer, engine, judge)
    state.lifecycle.ready(engine)
    if not state.lifecycle.is_ready:  # the engine died meanwhile: the lifecycle stops the server
        return
    for hook in state.on_ready:
        hook(state.service)
    # everything made so far lives as long as the server: keep the garbage collector from walking
    # it again and again (a full collection over the app's objects costs milliseconds, per-token
    # allocations trigger one every few hundred requests)
    gc.collect()
    gc.freeze()
    log.info("ready: serving %s", engine.info.name)
