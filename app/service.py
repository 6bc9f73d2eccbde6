"""The API process's composition: settings -> the engine client (starting the engine process, or
connecting to the supervisor's), the tokenizer, and the `Service` the routes use.

The engine process's own main is app/engine/process.py; the API process never imports torch."""

import asyncio
from dataclasses import dataclass

from app.config import Settings
from app.detect.judge import Judge
from app.engine.admission import Admission
from app.engine.client import EngineClient, EngineHandle
from app.engine.process import run_engine_core
from app.engine.protocol import EngineInfo
from app.model.tokenizer import Tokenizer


@dataclass
class Service:
    """What the routes need once the model is loaded."""

    settings: Settings
    info: EngineInfo
    tokenizer: Tokenizer
    engine: EngineClient
    judge: Judge | None = None  # GPT2_DETECTOR's trained judge (app/detect), checked against the model


async def start_engine(settings: Settings, admission: Admission | None = None) -> EngineClient:
    """Start an engine core process for these settings and connect to it (this client owns it)."""
    return await EngineClient.start(run_engine_core, settings, max_queue=settings.max_queue,
                                    step_timeout=settings.step_timeout, admission=admission)


async def connect_engine(settings: Settings, handle: EngineHandle, admission: Admission | None = None) -> EngineClient:
    """Connect to the engine core that the supervisor started (GPT2_API_SERVERS > 1)."""
    return await EngineClient.connect(handle, max_queue=settings.max_queue, step_timeout=settings.step_timeout,
                                      admission=admission)


async def load_tokenizer(info: EngineInfo) -> Tokenizer:
    return await asyncio.to_thread(Tokenizer, info.tokenizer_dir)
