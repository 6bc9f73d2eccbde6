"""Running the HTTP service: uvicorn with a graceful drain on SIGTERM, and with GPT2_API_SERVERS > 1
a supervisor of several API processes around one engine process.

One API process (the default): this process serves HTTP and owns the engine process.

    gpt2-serve serve ─┬─ uvicorn (HTTP, tokenizer, SSE)
                      └─ engine core process (model, scheduler, runner)

Several: this process only supervises. It binds the port, starts the engine, then N API
processes that share the socket (the kernel spreads connections over them), the engine, and a
table of admission counts (app/engine/admission.py), so that the engine's capacity, the fair
shares and the per-key limits hold across them. An API process that dies is replaced (its
connections are lost; the engine drops the sequences it left, its counts are zeroed) while the
others serve on; one that keeps dying (WORKER_RESTARTS within RESTART_WINDOW) stops the server:
the others drain their streams first. If the engine dies, every API process ends its streams with
`engine_dead` and exits, and so does this one (code 1), so the orchestrator restarts the pod;
SIGTERM drains every API process, then stops the engine.
"""

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import weakref
from multiprocessing.connection import wait

import uvicorn

from app.api.lifecycle import Phase
from app.config import Settings
from app.engine.admission import ShareTable
from app.engine.client import EngineHandle, EngineProcess

log = logging.getLogger("app.server")

WORKER_RESTARTS = 5  # API processes replaced within RESTART_WINDOW seconds before the server gives up
RESTART_WINDOW = 60.0
ENGINE_DEATH_EXIT = 10.0  # seconds API processes get to answer and exit after the engine died


class Server(uvicorn.Server):
    """uvicorn, plus what needs its internals (the drain itself is the app's: app/api/lifecycle.py):
    idle keep-alive connections closed as soon as a drain starts, an exit (code 0 after a clean
    drain) without re-raising the signal, the count of open connections for GPT2_MAX_CONNECTIONS'
    OpenAI-shaped 503 (RequestContextMiddleware), and a connection whose request headers have not
    all arrived within GPT2_READ_TIMEOUT closed (uvicorn has no deadline for them)."""

    def __init__(self, config: uvicorn.Config, app_state):
        super().__init__(config)
        lifecycle = app_state.lifecycle
        lifecycle.stop = lambda: setattr(self, "should_exit", True)
        lifecycle.on_drain.append(self._close_idle_connections)
        app_state.open_connections = lambda: len(self.server_state.connections)
        self.read_timeout = app_state.settings.read_timeout

    async def serve(self, sockets=None) -> None:
        watcher = asyncio.get_running_loop().create_task(self._close_slow_headers())
        try:
            await super().serve(sockets)
        finally:
            watcher.cancel()

    def _close_idle_connections(self) -> None:
        """Close connections between requests now; the others close once their response is sent."""
        for connection in list(self.server_state.connections):
            connection.shutdown()

    async def _close_slow_headers(self) -> None:
        timeout = self.read_timeout
        waiting: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> (its cycle, since)
        while True:
            await asyncio.sleep(min(1.0, timeout / 20))  # (a connection is closed within 10% of its deadline)
            now = time.monotonic()
            for connection in list(self.server_state.connections):
                cycle = getattr(connection, "cycle", None)
                # no request yet, or the last one answered and no keep-alive timer: headers are (maybe) arriving
                if cycle is None or (cycle.response_complete and connection.timeout_keep_alive_task is None):
                    seen_cycle, since = waiting.setdefault(connection, (cycle, now))
                    if seen_cycle is not cycle:
                        waiting[connection] = (cycle, now)
                    elif now - since > timeout:
                        connection.transport.close()
                else:
                    waiting.pop(connection, None)

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
    lifecycle = app.state.gpt2.lifecycle
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on", timeout_keep_alive=settings.keep_alive_timeout)
    Server(config, app.state.gpt2).run(sockets=None if sock is None else [sock])
    return 1 if lifecycle.phase in (Phase.FAILED, Phase.ENGINE_DEAD) else 0


def supervise(settings: Settings) -> int:
    """Bind, start the engine and GPT2_API_SERVERS API processes; return the exit code."""
    from app.api.auth import Callers
    from app.engine.process import run_engine_core

    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    directory = tempfile.mkdtemp(prefix="gpt2-serve-")
    metrics_dir = os.path.join(directory, "metrics")
    os.mkdir(metrics_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # the API processes' series, summed at scrape
    shares = ShareTable.create(os.path.join(directory, "shares"), settings.api_servers, Callers(settings).slots)
    stopping = False

    def on_signal(sig, frame) -> None:
        nonlocal stopping
        if not stopping:
            log.info("signal %s: draining the API processes", signal.Signals(sig).name)
        stopping = True
        if sig == signal.SIGTERM:  # (Ctrl-C's SIGINT reaches every process of the group by itself)
            workers.signal_all(sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = Workers(settings, sock, shares)
    try:
        engine = asyncio.run(EngineProcess.start(run_engine_core, settings))
    except Exception as exc:
        log.critical("start-up failed: %s", exc)
        shutil.rmtree(directory, ignore_errors=True)
        return 1
    try:
        for row in range(settings.api_servers):
            workers.start(engine, row)
        log.info("serving on %s:%d with %d API processes and one engine process (pid %d)", settings.host,
                 settings.port, settings.api_servers, engine.info.pid)
        code = watch(engine, workers, lambda: stopping)
        if code and engine.process.is_alive():  # an API process that keeps dying: the others drain first
            workers.signal_all(signal.SIGTERM)
            workers.join(settings.drain_timeout + 10)
        elif code:  # the engine died: the API processes end their streams with engine_dead and exit
            workers.join(ENGINE_DEATH_EXIT)
    finally:
        workers.join(5)
        workers.kill()
        engine.stop()
        shutil.rmtree(directory, ignore_errors=True)
        sock.close()
    return code


class Workers:
    """The API processes, by row (their row of the share table and their identity at the engine)."""

    def __init__(self, settings: Settings, sock: socket.socket, shares: ShareTable):
        self.settings, self.sock, self.shares = settings, sock, shares
        self.by_row: dict[int, multiprocessing.Process] = {}
        self.restarts: list[float] = []  # when API processes were replaced
        self._ctx = multiprocessing.get_context("spawn")

    def start(self, engine: EngineProcess, row: int) -> None:
        handle = EngineHandle(engine.address, engine.info, records_step_stats=row == 0, row=row,
                              shares_path=self.shares.path)
        worker = self._ctx.Process(target=run_api_worker, args=(self.settings, handle, self.sock),
                                   name=f"gpt2-api-{row}")
        worker.start()
        self.by_row[row] = worker

    def replace(self, engine: EngineProcess, row: int) -> bool:
        """Start a new API process in a dead one's place; False once they die too often."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
        if len(self.restarts) > WORKER_RESTARTS:
            return False
        self.shares.clear_row(row)  # its requests and sequences are gone (the engine drops the sequences
        self.start(engine, row)  # when the new process says hello under the same identity)
        return True

    def signal_all(self, sig: int) -> None:
        for worker in self.by_row.values():
            if worker.is_alive():
                os.kill(worker.pid, sig)

    def join(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for worker in self.by_row.values():
            worker.join(max(0.0, deadline - time.monotonic()))

    def kill(self) -> None:
        for worker in self.by_row.values():
            if worker.is_alive():
                worker.kill()
                worker.join(10)


def watch(engine: EngineProcess, workers: Workers, stopping) -> int:
    """Wait until every API process has exited (0 if each drained cleanly); replace one that dies
    unasked; return 1 when the engine dies or API processes keep dying."""
    from prometheus_client import multiprocess

    code = 0
    while True:
        alive = {w.sentinel: (row, w) for row, w in workers.by_row.items() if w.exitcode is None}
        if not alive:
            return code
        ready = wait([engine.process.sentinel, *alive], timeout=1.0)
        if engine.process.sentinel in ready:
            engine.process.join(5)  # reap it now: the API processes see it gone (a zombie looks alive)
            log.critical("the engine process died (exit code %s); stopping", engine.process.exitcode)
            return 1
        for sentinel in ready:
            row, worker = alive[sentinel]
            worker.join()
            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(worker.pid)
            # killed by our own SIGTERM before it set its handlers (still starting): it never accepted
            # a connection, so that is a clean exit too
            clean = worker.exitcode == 0 or (stopping() and worker.exitcode == -signal.SIGTERM)
            if stopping():
                if not clean:
                    log.warning("API process %s exited with code %s while draining", worker.name, worker.exitcode)
                    code = 1
                continue
            log.critical("API process %s exited (code %s); its connections are lost", worker.name, worker.exitcode)
            if not workers.replace(engine, row):
                log.critical("%d API processes died within %.0f s; stopping (the others drain first)",
                             WORKER_RESTARTS + 1, RESTART_WINDOW)
                return 1


def run_api_worker(settings: Settings, handle: EngineHandle, sock: socket.socket) -> None:
    sys.exit(run_api_server(settings, handle, sock))
