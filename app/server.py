"""Running the HTTP service: uvicorn with a graceful drain on SIGTERM, and with GPT2_API_SERVERS > 1
a supervisor of several API processes around one engine process.

One API process (the default): this process serves HTTP and owns the engine process.

    gpt2-serve serve ─┬─ uvicorn (HTTP, tokenizer, SSE)
                      └─ engine core process (model, scheduler, runner)

Several: this process only supervises. It binds the port, starts the engine, then N API
processes that share the socket (the kernel spreads connections over them) and the engine. If
any child dies, or the engine does, every process is stopped and this one exits 1, so the
orchestrator restarts the pod; SIGTERM drains every API process, then stops the engine.
"""

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait

import uvicorn

from app.config import Settings
from app.engine.client import EngineHandle, EngineProcess

log = logging.getLogger("app.server")


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first SIGTERM/SIGINT drains: /readyz turns 503, new requests get
    503, admitted ones (streams included) finish within GPT2_DRAIN_TIMEOUT, then the server exits.
    A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, app_state):
        super().__init__(config)
        self.app_state = app_state
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self.app_state.draining or self.loop is None or self.app_state.service is None:
            return super().handle_exit(sig, frame)
        self.app_state.draining = True
        log.info("signal %s: draining (up to %.0f s) before exit", signal.Signals(sig).name,
                 self.app_state.settings.drain_timeout)
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain()))

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.app_state.settings.drain_timeout
        engine = self.app_state.service.engine
        while (self.app_state.in_flight or engine.num_unfinished) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.app_state.in_flight or engine.num_unfinished:
            log.warning("drain timeout: %d requests still running are cut off", self.app_state.in_flight)
        else:
            log.info("drained: every admitted request has finished")
        self.should_exit = True


def serve(settings: Settings) -> None:
    """Serve until SIGTERM, then drain. Exits 1 if the model could not be loaded or the engine died."""
    if settings.api_servers > 1:
        sys.exit(supervise(settings))
    sys.exit(run_api_server(settings))


def run_api_server(settings: Settings, handle: EngineHandle | None = None, sock: socket.socket | None = None) -> int:
    """One API process: uvicorn on GPT2_HOST:GPT2_PORT (or the supervisor's socket). Returns the exit code."""
    from app.main import create_app

    if handle is not None:  # a child of the supervisor
        from app.logs import configure_logging

        configure_logging(settings)
    app = create_app(settings, handle)
    state = app.state.gpt2
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on", limit_concurrency=settings.max_connections,
                            timeout_keep_alive=settings.keep_alive_timeout)
    server = DrainingServer(config, state)
    state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run(sockets=None if sock is None else [sock])
    return 1 if state.load_error is not None or state.engine_error is not None else 0


def supervise(settings: Settings) -> int:
    """Bind, start the engine and GPT2_API_SERVERS API processes; return the exit code."""
    from app.service import run_engine_core

    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    metrics_dir = tempfile.mkdtemp(prefix="gpt2-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the API processes' series, summed at scrape
    stopping = False

    def on_signal(sig, frame) -> None:
        nonlocal stopping
        if not stopping:
            log.info("signal %s: draining the API processes", signal.Signals(sig).name)
        stopping = True
        if sig == signal.SIGTERM:  # (Ctrl-C's SIGINT reaches every process of the group by itself)
            for worker in workers:
                if worker.is_alive():
                    os.kill(worker.pid, sig)

    workers: list[multiprocessing.Process] = []
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        engine = asyncio.run(EngineProcess.start(run_engine_core, settings))
    except Exception as exc:
        log.critical("start-up failed: %s", exc)
        return 1
    ctx = multiprocessing.get_context("spawn")
    try:
        for index in range(settings.api_servers):
            handle = EngineHandle(engine.address, engine.info, records_step_stats=index == 0)
            worker = ctx.Process(target=run_api_worker, args=(settings, handle, sock), name=f"gpt2-api-{index}")
            worker.start()
            workers.append(worker)
        log.info("serving on %s:%d with %d API processes and one engine process (pid %d)", settings.host,
                 settings.port, len(workers), engine.info.pid)
        code = watch(engine, workers, lambda: stopping)
    finally:
        engine.process.join(0)  # reap a dead engine: the API processes then see it gone, fail what was
        deadline = time.monotonic() + 5  # in flight with 503, and exit by themselves
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.terminate()
                worker.join(10)
        engine.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        sock.close()
    return code


def watch(engine: EngineProcess, workers: list[multiprocessing.Process], stopping) -> int:
    """Wait until every API process has exited (0 if each drained cleanly), or until a process
    dies unasked (1: every other process is then stopped)."""
    from prometheus_client import multiprocess

    alive = {w.sentinel: w for w in workers}
    while alive:
        ready = wait([engine.process.sentinel, *alive], timeout=1.0)
        if engine.process.sentinel in ready:
            log.critical("the engine process died (exit code %s); stopping", engine.process.exitcode)
            return 1
        for sentinel in ready:
            worker = alive.pop(sentinel)
            worker.join()
            multiprocess.mark_process_dead(worker.pid)
            # killed by our own SIGTERM before it set its handlers (still starting): it never accepted
            # a connection, so that is a clean exit too
            clean = worker.exitcode == 0 or (stopping() and worker.exitcode == -signal.SIGTERM)
            if not clean or not stopping():
                log.critical("API process %s exited (code %s); stopping", worker.name, worker.exitcode)
                return 1
    return 0


def run_api_worker(settings: Settings, handle: EngineHandle, sock: socket.socket) -> None:
    sys.exit(run_api_server(settings, handle, sock))
