"""The engine process's main: settings -> the model, the runner, the scheduler and the engine core,
warmed up and serving its socket (core.py's CoreServer).

`run_engine_core` is what the API server (or the supervisor, GPT2_API_SERVERS > 1) spawns;
`build_core` also serves the benchmarks and the tests that step an engine in their own process.
Nothing here imports torch at import time (the model's modules are imported inside build_core),
so the API process can name run_engine_core as a process target and stay small."""

import logging
import os
import signal
import sys
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from app.config import Settings
from app.engine.memory import device_memory_readers
from app.engine.protocol import EngineInfo
from app.model.tokenizer import Tokenizer

if TYPE_CHECKING:
    from app.engine.core import EngineCore

log = logging.getLogger(__name__)


def build_core(settings: Settings, static_decode: bool | None = None) -> tuple["EngineCore", EngineInfo]:
    """Load the model and wire an engine core around it (warmed up, not yet serving; on a GPU with
    GPT2_CUDA_GRAPHS=auto, its decode step captured). `static_decode` forces the fixed-shape
    decode step on or off (tests run it eagerly on the CPU)."""
    from app.engine.core import EngineCore
    from app.engine.runner import ModelRunner
    from app.engine.scheduler import Scheduler, lens_cost
    from app.model.loader import load_model

    loaded = load_model(settings.model, settings.load_format, settings.device, settings.dtype)
    config = loaded.model.config
    tokenizer = Tokenizer(loaded.tokenizer_dir)
    if tokenizer.vocab_size > config.vocab_size:
        raise RuntimeError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model only {config.vocab_size}")
    max_model_len = min(settings.max_model_len or config.n_positions, config.n_positions)
    if static_decode is None:
        static_decode = settings.cuda_graphs == "auto" and loaded.device.type == "cuda"
    runner = ModelRunner(loaded.model, settings.max_batch_size, max_model_len, tokenizer.eos_token_id,
                         vocab_size=tokenizer.vocab_size, static_decode=static_decode)
    runner.warm_up()
    scheduler = Scheduler(settings.max_batch_size, settings.max_num_batched_tokens, max_model_len,
                          tokenizer.eos_token_id, settings.prefix_caching,
                          lens_cost(config.n_layer, config.n_embd, config.vocab_size))
    core = EngineCore(runner, scheduler, settings.seed)
    device, dtype = str(loaded.device), str(loaded.dtype).removeprefix("torch.")
    reference = None
    if settings.embedding_reference:  # statistics that standardise embeddings (app/embedding_stats.py)
        from app.embedding_stats import load_or_measure
        from app.engine.readout import reference_statistics

        identity = {"model": settings.model, "load_format": settings.load_format, "dtype": dtype,
                    "num_parameters": config.num_parameters}
        runner.reader.stats, reference = load_or_measure(settings, tokenizer, max_model_len, identity,
                                                         partial(reference_statistics, core))
    used, total = device_memory_readers(device)
    info = EngineInfo(settings.model_name, settings.model, device, dtype, settings.load_format, max_model_len,
                      config.num_parameters, runner.vocab_size, tokenizer.eos_token_id, settings.max_batch_size,
                      str(loaded.tokenizer_dir), total(), used(), num_layers=config.n_layer, num_heads=config.n_head,
                      hidden_size=config.n_embd, embedding_reference=reference,
                      cuda_graphs=runner.static.captured if runner.static else [])
    log.info("model %s ready on %s (%s, %s weights, %.0fM parameters, max_model_len %d, CUDA graphs: %s)",
             info.source, info.device, info.dtype, info.load_format, info.num_parameters / 1e6, max_model_len,
             f"batch sizes {info.cuda_graphs}" if info.cuda_graphs else "off")
    return core, info


# Read once, when torch loads its thread pools: the engine process sets them before importing torch
# (and so do the benchmarks that step an engine in their own process). A value already in the
# environment wins.
ENGINE_ENVIRONMENT = {
    # OpenMP's worker threads wait between the model's kernels. libgomp's default spins ~3 ms
    # first, which steals the core the API process needs to stream tokens (7x fewer tokens/s
    # through HTTP with the tiny model on 2 cores); sleeping at once (PASSIVE) pays a wake-up per
    # kernel instead (GPT-2 small: 28 vs 22 ms per decode step at batch 1). Spinning ~50 us
    # (5000 spins) covers the gaps between one step's kernels and gives the core back between
    # steps: GPT-2 small 12% lower latency and 5% more tokens/s through HTTP than PASSIVE, the
    # tiny model 18% fewer (bench/serving.py, bench/overhead.py; docs/performance.md).
    "OMP_WAIT_POLICY": "ACTIVE",
    "GOMP_SPINCOUNT": "5000",
    # oneDNN keeps a compiled kernel per matmul shape, 1024 by default; prefill chunks come in every
    # length, so that cache alone grew the engine by ~230 MB over a few thousand mixed requests
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128",
}


def prepare_engine_environment() -> None:
    for name, value in ENGINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def run_engine_core(settings: Settings, address: str, ready: Connection, parent_pid: int) -> None:
    """The engine process's main: load, report ready (or why not) on `ready`, then serve `address`
    until the parent process goes away."""
    prepare_engine_environment()  # before torch is imported
    from app.engine.core import CoreServer
    from app.logs import configure_logging

    configure_logging(settings)
    # Ctrl-C and group-wide SIGTERMs reach this process too: the server drains first, then stops it;
    # and if the server is gone, CoreServer.run notices and returns
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        core, info = build_core(settings)
        server = CoreServer(core, address, info.device, parent_pid)
    except Exception as exc:
        log.critical("the engine failed to start: %s", exc, exc_info=not isinstance(exc, (OSError, RuntimeError)))
        ready.send(("error", str(exc)))
        sys.exit(1)
    ready.send(("ready", info))
    ready.close()
    server.run()
