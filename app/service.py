"""The composition root: settings -> model, tokenizer, runner, scheduler, engine.

Used by the HTTP app's lifespan, the benchmarks and the tests alike."""

import logging
from dataclasses import dataclass

from app.config import Settings
from app.detect.judge import Judge
from app.engine.async_engine import AsyncEngine
from app.engine.engine import Engine
from app.engine.scheduler import Scheduler
from app.model.loader import load_model
from app.model.runner import ModelRunner
from app.model.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    name: str  # as served
    source: str  # GPT2_MODEL
    device: str
    dtype: str
    load_format: str
    max_model_len: int
    num_parameters: int


@dataclass
class Service:
    settings: Settings
    info: ModelInfo
    tokenizer: Tokenizer
    engine: AsyncEngine
    judge: Judge | None = None  # GPT2_DETECTOR's trained judge (app/detect), checked against the model


def build_engine(settings: Settings) -> tuple[Engine, Tokenizer, ModelInfo]:
    """Load the model and wire a synchronous engine around it (warmed up, no thread yet)."""
    loaded = load_model(settings.model, settings.load_format, settings.device, settings.dtype)
    config = loaded.model.config
    tokenizer = Tokenizer(loaded.tokenizer_dir)
    if tokenizer.vocab_size > config.vocab_size:
        raise RuntimeError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model only {config.vocab_size}")
    max_model_len = min(settings.max_model_len or config.n_positions, config.n_positions)
    runner = ModelRunner(loaded.model, settings.max_batch_size, max_model_len, tokenizer.eos_token_id, settings.seed,
                         vocab_size=tokenizer.vocab_size)
    runner.warm_up()
    scheduler = Scheduler(settings.max_batch_size, settings.max_num_batched_tokens, settings.max_queue)
    engine = Engine(runner, scheduler, max_model_len, runner.vocab_size, tokenizer.eos_token_id)
    info = ModelInfo(settings.model_name, settings.model, str(loaded.device), str(loaded.dtype).removeprefix("torch."),
                     settings.load_format, max_model_len, config.num_parameters)
    log.info("model %s ready on %s (%s, %s weights, %.0fM parameters, max_model_len %d)", info.source, info.device,
             info.dtype, info.load_format, info.num_parameters / 1e6, max_model_len)
    return engine, tokenizer, info
